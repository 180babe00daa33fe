"""Fixtures for pipeline tests: a small RGBA photo of a figure, tiny weights, tiny stage sizes and a
subprocess driver."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from priors import tiny
from tests.stages.geometry_helpers import TINY

ROOT = Path(__file__).resolve().parents[2]


def write_person(path: Path, shade: int = 200) -> Path:
    arr = np.zeros((128, 96, 4), np.uint8)
    arr[10:120, 30:66] = (40, 80, shade, 255)
    arr[4:30, 38:58] = (200, 150, 120, 255)
    Image.fromarray(arr, "RGBA").save(path)
    return path


def tiny_run_args(weights: Path, prior_3d: str) -> list[str]:
    """``geneman run`` flags for a real run on tiny weights from photo to ``final/`` in about a minute on
    a CPU: every size tiny, few steps, no Sapiens."""
    sets = ([f"{stage}.{s}" for stage, items in TINY.items() for s in items]
            + ["preprocess.canvas=64", "preprocess.depth_normal=false", "geometry_init.steps=4",
               "geometry_sculpt.steps=2", "texture_coarse.steps=2", "texture_refine.steps=2",
               "texture_refine.n_views=1", f"priors.prior_3d_diffusers={prior_3d}",
               "export.turntable_resolution=32", "export.preview_resolution=32"])
    return ["--preset", "cpu", "--weights", str(weights), "--quiet", *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """``(folder, prior_3d_diffusers)``: every weight at tiny size (:func:`priors.tiny.write_weights`)."""
    folder = tmp_path_factory.mktemp("weights")
    cfg = tiny.write_weights(folder)
    return folder, cfg.prior_3d_diffusers


@pytest.fixture
def photo(tmp_path) -> Path:
    return write_person(tmp_path / "person.png")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def drive(*args: str, env: dict | None = None, wait: bool = True):
    """Run ``python -m tests.drive ARGS`` (the real session code with test-double stages)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, "-m", "tests.drive", *map(str, args)]
    if not wait:  # SIGINT as a terminal's shell leaves it (a suite started in the background has it ignored)
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)
