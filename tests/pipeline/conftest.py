"""Fixtures for pipeline tests: a small RGBA photo of a figure and a subprocess driver."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def write_person(path: Path, shade: int = 200) -> Path:
    arr = np.zeros((128, 96, 4), np.uint8)
    arr[10:120, 30:66] = (40, 80, shade, 255)
    arr[4:30, 38:58] = (200, 150, 120, 255)
    Image.fromarray(arr, "RGBA").save(path)
    return path


@pytest.fixture
def photo(tmp_path) -> Path:
    return write_person(tmp_path / "person.png")


def drive(*args: str, env: dict | None = None, wait: bool = True):
    """Run ``python -m tests.drive ARGS`` (the real session code with test-double stages)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, "-m", "tests.drive", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)
