"""Faults, round 2 (issue 26): what a SIGKILL leaves behind is cleaned up, an old error.log is set aside,
the xatlas child dies with its parent, and the small CLI cases (status of a missing folder, a closed
pipe, a garbage checkpoint's warning)."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from pipeline.cli.main import main
from pipeline.run import session
from pipeline.run.checkpoint import Checkpointer
from pipeline.run.export import export_run
from pipeline.run.progress import Progress
from pipeline.run.signals import StopSignals
from pipeline.run.store import RunStore
from tests.doubles import double_stages, small_config
from tests.pipeline.conftest import ROOT


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def gone(pid: int) -> bool:
    """True when ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, **kw)


def done_run(photo: Path, out: Path) -> Path:
    session.start(photo, out, small_config(), stages=double_stages(), priors=None, depth_normal=None, quiet=True)
    return out


def kill_during_writes(out: Path) -> None:
    """A process SIGKILLed inside a write of final/avatar.glb, final/turntable.mp4 and run.json (the real writers)."""
    r = python(f"""
        import os, signal
        from pathlib import Path
        from pipeline.run import store
        from stages.render.export import atomic_path
        out = Path({str(out)!r})
        for name in ("avatar.glb", "turntable.mp4"):
            atomic_path(out / "final" / name).__enter__().write_bytes(b"half")
        store.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed before the rename
        store.RunStore(out).save()
    """)
    assert r.returncode == -signal.SIGKILL, r.stderr


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in [*out.iterdir(), *(out / "final").iterdir()] if ".partial-" in p.name
                  or p.name.endswith(".tmp"))


def test_resume_and_export_remove_what_killed_writers_left_and_nothing_else(tmp_path, photo):
    out = done_run(photo, tmp_path / "out")
    for call in (lambda: session.resume(out, stages=double_stages(), priors=None, depth_normal=None, quiet=True),
                 lambda: export_run(out, stages=double_stages())):
        kill_during_writes(out)
        killed = leftovers(out)
        assert len(killed) == 3 and any(n.startswith(".run.json.") for n in killed), killed
        legacy = out / ".run.json.k3j_9xq2.tmp"  # an older geneman's name: no pid (removed under the lock)
        legacy.write_text("{")
        mine = out / "final" / f".avatar.partial-{os.getpid()}.glb"  # a writer that lives: kept
        mine.write_bytes(b"mine")
        foreign = [out / ".notes.tmp", out / "final" / ".avatar.partial-x.glb", out / "final" / "keep.partial-1.glb"]
        for p in foreign:
            p.write_text("not geneman's")
        call()
        assert leftovers(out) == sorted(p.name for p in (mine, *foreign)), call
        assert all(p.exists() for p in foreign)
        for p in (mine, *foreign):
            p.unlink()
    assert json.loads((out / "run.json").read_text())["status"] == "done"


def test_the_lock_removes_only_dead_pids_temp_files(tmp_path):
    root = tmp_path / "run"
    (root / "final").mkdir(parents=True)
    dead, live = dead_pid(), os.getppid()
    names = {f".run.json.{dead}.abcd_123.tmp": False, f".config.yaml.{live}.abcd_123.tmp": True,
             f".preview.partial-{dead}.png": False, f".avatar.partial-{live}.glb": True}
    for name in names:
        (root / "final" / name).write_text("x")
    with RunStore(root).lock():
        assert {n: (root / "final" / n).exists() for n in names} == names


def test_an_old_error_log_is_set_aside_when_its_stage_later_succeeds(tmp_path, photo, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("GENEMAN_TEST_FAIL", "texture_coarse:2")
    try:
        done_run(photo, out)
    except Exception:  # noqa: BLE001 - the injected failure
        pass
    folder = out / "03_texture_coarse"
    assert "injected failure" in (folder / "error.log").read_text()
    monkeypatch.delenv("GENEMAN_TEST_FAIL")
    session.resume(out, stages=double_stages(), priors=None, depth_normal=None, quiet=True)
    assert not (folder / "error.log").exists()
    kept = list(folder.glob("error-*.log"))
    assert len(kept) == 1 and "injected failure" in kept[0].read_text()
    assert json.loads((out / "run.json").read_text())["status"] == "done"


def test_the_xatlas_child_dies_with_its_parent(tmp_path):
    pid_file = tmp_path / "xatlas.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import torch
        from stages.render import uv
        uv._XATLAS_SCRIPT = "import time\\nopen({str(pid_file)!r}, 'w').write(str(__import__('os').getpid()))\\n" \\
                            "time.sleep(120)\\n"  # an unwrap that takes long
        uv.unwrap_uv(torch.rand(3, 3), torch.tensor([[0, 1, 2]]), timeout=300)
    """)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = None
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            assert parent.poll() is None, "the parent ended before its xatlas child started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(child), "the xatlas child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        if child and not gone(child):
            os.kill(child, signal.SIGKILL)


def test_status_shows_the_good_run_then_one_line_for_a_missing_folder(tmp_path, photo, capsys):
    out = done_run(photo, tmp_path / "good")
    missing = tmp_path / "missing"
    assert main(["status", str(out), str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{out}: done") and "texture_refine" in captured.out
    assert captured.err.splitlines() == [f"geneman: error: {missing} is not a geneman run folder (no run.json)"]


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    store = RunStore(tmp_path / "run")
    store.manifest.status = "done"
    store.save()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "status", str(store.root)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `| head` that has read what it wanted (before geneman writes at all)
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert err == "" and proc.returncode == 128 + signal.SIGPIPE, (proc.returncode, err)


class Unlisted:
    """A class that ``torch.load(weights_only=True)`` refuses (its error message spans many lines)."""


def test_a_garbage_checkpoint_is_one_warning_line_and_the_previous_one_is_used(tmp_path, caplog):
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, 10, 1, 3, Progress("t", 10, quiet=True), StopSignals(()))
    ckpt.save(3, {"model": model})
    newest = ckpt.save(4, {"model": model})
    buf = io.BytesIO()
    torch.save({"format": 1, "objects": Unlisted()}, buf)
    newest.write_bytes(buf.getvalue())  # garbage with a matching digest: only loading it tells
    newest.with_name(newest.name + ".sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest())
    with caplog.at_level(logging.WARNING, logger="geneman"):
        assert ckpt.resume({"model": torch.nn.Linear(2, 2)}) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "\x1b" not in warnings[0], warnings
    assert str(newest) in warnings[0] and "previous checkpoint, step_00000003.pt" in warnings[0]
    assert "Unsupported global" in warnings[0]
