"""Shared pieces of the batch tests: photos, reference runs, waiting on run folders."""
from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.run import session
from tests.doubles import double_stages, small_config
from tests.pipeline.conftest import write_person

STAGE_FOLDERS = ("01_geometry_init", "02_geometry_sculpt", "03_texture_coarse", "04_texture_refine")


def result_bytes(run: Path) -> dict[str, bytes]:
    """The saved result of every stage of a run folder, as bytes."""
    return {s: (run / s / "result" / "weights.safetensors").read_bytes() for s in STAGE_FOLDERS}


def reference(photo: Path, out: Path) -> dict[str, bytes]:
    """Run ``photo`` uninterrupted in this process (test doubles) and return its results."""
    session.start(photo, out, small_config(), stages=double_stages(), priors=None, depth_normal=None, quiet=True)
    return result_bytes(out)


def photos(folder: Path, shades=(100, 140, 180)) -> list[Path]:
    """Photos ``p0.png``, ``p1.png``, ... of different shades in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_person(folder / f"p{i}.png", shade) for i, shade in enumerate(shades)]


def manifest(run: Path) -> dict:
    """``run.json`` of a run folder ({} while it does not exist or is being replaced)."""
    try:
        return json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_until(condition, timeout: float, what: str, poll: float = 0.2, on_timeout=lambda: ""):
    """Poll ``condition()`` until it returns something true; AssertionError after ``timeout`` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")


def stage_step(run: Path, stage: str) -> int:
    """The step count run.json records for ``stage`` (0 before it starts)."""
    return manifest(run).get("stages", {}).get(stage, {}).get("step", 0)


def no_priors():
    """The batch jobs' priors factory in tests: the test doubles take no priors."""
    return None
