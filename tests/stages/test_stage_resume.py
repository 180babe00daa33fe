"""SIGKILL in the middle of each of the four stages (the real stages, tiny priors, the real CLI), then
``geneman resume``: every stage's result and the avatar are bitwise those of an uninterrupted run (stage
4's cached edits included: they are in its checkpoint), and two uninterrupted runs on two threads are
bitwise equal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from evaluation.framing import frame_subject
from evaluation.subjects import make_subject
from evaluation.truth import render_truth, to_uint8
from priors import tiny
from stages.render.cameras import reference_camera
from tests.stages.geometry_helpers import TINY

RESULTS = ("01_geometry_init", "02_geometry_sculpt", "03_texture_coarse", "04_texture_refine")
FILES = {"01_geometry_init": ("mesh.safetensors", "state.safetensors"),
         "02_geometry_sculpt": ("mesh.safetensors", "state.safetensors"),
         "03_texture_coarse": ("mesh.safetensors", "state.safetensors"),
         "04_texture_refine": ("textured.safetensors",)}
PRIOR_3D = "tiny/geneman-prior3d"
SETS = ([f"{stage}.{s}" for stage, items in TINY.items() for s in items]
        + ["preprocess.canvas=64", "preprocess.depth_normal=false", "preprocess.landmarks=false",
           "geometry_init.steps=16", "geometry_sculpt.steps=10", "texture_coarse.steps=8",
           "texture_refine.steps=12", "texture_refine.n_views=3", "texture_refine.edit_every=1",
           "checkpoint.every_n_steps=2", "checkpoint.keep_last=2", "export.formats=[glb]"])


def geneman(*args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.cli.main", *args]
    # Two threads, as this machine runs: without the deterministic kernels (stages.loop.deterministic)
    # two uninterrupted runs differed from stage 2's fourth step on.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2")
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def weight_args(weights: Path) -> list[str]:
    """Where the tiny weights are: given to every invocation (a run folder's weight paths are not trusted)."""
    return ["--weights", str(weights), "--set", f"priors.prior_3d_diffusers={PRIOR_3D}"]


def run_args(photo: Path, out: Path, weights: Path) -> list[str]:
    return ["run", str(photo), "-o", str(out), "--preset", "cpu", *weight_args(weights), "--quiet",
            *[a for s in SETS for a in ("--set", s)]]


def kill_after_checkpoint(proc: subprocess.Popen, ckpt: Path, min_step: int = 2) -> None:
    """SIGKILL ``proc`` once a checkpoint at ``min_step`` or later is complete (its digest written)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if any(int(p.name[5:13]) >= min_step for p in ckpt.glob("step_*.pt.sha256")):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        assert proc.poll() is None, f"the run ended before {ckpt} had a checkpoint: {proc.stderr.read()}"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint in {ckpt} within 300 s")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    assert tiny.write_weights(tmp / "weights").prior_3d_diffusers == PRIOR_3D
    subject = make_subject("front_back")
    maps = render_truth(subject, reference_camera(), 64, 64, frame_subject(subject, 64))
    photo = tmp / "photo.png"
    import torch
    Image.fromarray(to_uint8(torch.cat([maps["rgb"][0], maps["mask"][0]], dim=-1))).save(photo)
    return tmp, photo


@pytest.fixture(scope="module")
def straight(setup):
    """An uninterrupted run on two threads."""
    tmp, photo = setup
    r = geneman(*run_args(photo, tmp / "straight", tmp / "weights"))
    assert r.returncode == 0, r.stderr
    return tmp / "straight"


def assert_same_results(a: Path, b: Path, why: str) -> None:
    """Every stage's result files and final/avatar.glb of two run folders are the same bytes."""
    for folder in RESULTS:
        for name in FILES[folder]:
            same = (a / folder / "result" / name).read_bytes() == (b / folder / "result" / name).read_bytes()
            assert same, f"{folder}/{name} differs {why}"
    assert (a / "final" / "avatar.glb").read_bytes() == (b / "final" / "avatar.glb").read_bytes(), why


def test_two_uninterrupted_runs_on_two_threads_are_bitwise_equal(setup, straight):
    tmp, photo = setup
    again = tmp / "again"
    r = geneman(*run_args(photo, again, tmp / "weights"))
    assert r.returncode == 0, r.stderr
    assert_same_results(straight, again, "between two uninterrupted runs on two threads")


def test_sigkill_in_every_stage_then_resume_is_bitwise(setup, straight):
    """Stage 4 re-edits each of its 3 views every 3 steps here (edit_every 1), so the kill at step 2 or
    later lands between edits that the resumed run must not redo differently."""
    tmp, photo = setup
    cut = tmp / "cut"
    kill_after_checkpoint(geneman(*run_args(photo, cut, tmp / "weights"), wait=False), cut / RESULTS[0] / "ckpt")
    assert not (cut / RESULTS[0] / "result").exists()
    for done, killed in zip(RESULTS, RESULTS[1:]):
        proc = geneman("resume", str(cut), *weight_args(tmp / "weights"), "--quiet", wait=False)
        kill_after_checkpoint(proc, cut / killed / "ckpt")
        assert (cut / done / "result").is_dir() and not (cut / killed / "result").exists()
    r = geneman("resume", str(cut), *weight_args(tmp / "weights"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert_same_results(straight, cut, "after SIGKILL and resume")
