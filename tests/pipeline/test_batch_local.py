"""Local batch jobs as a user meets them: a job killed with kill -9 leaves its photos ``stopped``
(not ``queued`` forever); SIGINT, SIGTERM or SIGHUP to ``geneman batch`` stops its jobs and prints one line."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from pipeline.cli.status import status_text
from pipeline.run.store import pid_alive
from tests.pipeline.batch_helpers import manifest, photos, stage_step, wait_until
from tests.pipeline.conftest import drive


def batch(folder, out, *flags: str, sleep: str):
    return drive("batch", folder, "-o", out, "--executor", "local", "--quiet", *flags,
                 env={"GENEMAN_TEST_STEP_SLEEP": sleep}, wait=False)


def job_pid(run) -> int:
    """The pid of the process that runs ``run`` (its lock holder: the local job's Python)."""
    return wait_until(lambda: _lock_pid(run), 60, f"a lock on {run}")


def _lock_pid(run) -> int | None:
    try:
        return json.loads((run / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_killed_local_job_leaves_its_photos_stopped(tmp_path):
    photos(tmp_path / "in", (100, 160))
    out = tmp_path / "out"
    proc = batch(tmp_path / "in", out, "--images-per-job", "2", sleep="0.2")
    wait_until(lambda: stage_step(out / "p0", "geometry_init") >= 1, 120, "p0 to take a step",
               on_timeout=lambda: proc.stderr.read() if proc.poll() is not None else "")
    os.kill(job_pid(out / "p0"), signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err  # not every photo done
    assert "Traceback" not in err
    text = status_text([out])
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:-1]}
    assert rows["p0"][3] == "stopped" and rows["p1"][3] == "stopped", text  # p1 never started: not `queued`
    assert "2 images: 0 done, 0 running, 0 queued, 0 failed, 2 stopped" in text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_to_geneman_batch_stops_its_jobs_with_one_line(tmp_path, sig):
    photos(tmp_path / "in", (100, 160))
    out = tmp_path / "out"
    proc = batch(tmp_path / "in", out, "--max-parallel", "2", sleep="0.2")
    for name in ("p0", "p1"):
        wait_until(lambda n=name: stage_step(out / n, "geometry_init") >= 1, 120, f"{name} to take a step",
                   on_timeout=lambda: proc.stderr.read() if proc.poll() is not None else "")
    jobs = [job_pid(out / "p0"), job_pid(out / "p1")]
    os.kill(proc.pid, sig)  # the geneman batch process only, as `kill -INT PID` does
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 75, err
    lines = [ln for ln in err.splitlines() if ln.startswith("geneman:")]
    assert len(lines) == 1 and "stopped 2 local job(s)" in lines[0], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in jobs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in jobs), "a local job outlived geneman batch"
    for name in ("p0", "p1"):
        assert manifest(out / name)["status"] == "interrupted"  # checkpointed and stopped, resumable
    assert "2 images: 0 done, 0 running, 0 queued, 0 failed, 2 interrupted" in status_text([out])
