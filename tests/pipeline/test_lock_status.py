"""The run-folder lock, `geneman status`, progress output and the not-built stop of the real CLI."""
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from pipeline.cli.main import main
from pipeline.errors import LockError
from pipeline.logs import LOGGERS
from pipeline.run import session
from pipeline.run.progress import Progress
from pipeline.run.store import RunStore
from tests.doubles import double_stages, small_config
from tests.pipeline.conftest import drive, tiny_run_args
from tests.pipeline.test_resume import wait_for_step


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_live_lock_refuses(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": "x"}))
    with pytest.raises(LockError, match=f"in use by pid {os.getpid()}"):
        with RunStore(tmp_path).lock():
            pass


def test_stale_lock_is_taken_over_with_warning(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": "x"}))
    with caplog.at_level(logging.WARNING, logger="geneman"):
        with RunStore(tmp_path).lock():
            held = json.loads((tmp_path / ".lock").read_text())
            assert held["pid"] == os.getpid()
    assert "stale lock" in caplog.text and str(pid) in caplog.text
    assert not (tmp_path / ".lock").exists()


def test_second_process_on_a_running_folder_is_refused(tmp_path, photo, capsys):
    out = tmp_path / "out"
    proc = drive("run", photo, out, env={"GENEMAN_TEST_STEP_SLEEP": "0.2"}, wait=False)
    try:
        wait_for_step(out, 1)
        code = main(["resume", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by pid {proc.pid}" in err and err.count("\n") == 1
        assert main(["status", str(out)]) == 0
        text = capsys.readouterr().out
        assert f"(pid {proc.pid}" in text and "running" in text
    finally:
        proc.kill()
        proc.wait()
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stopped (process gone" in text


def test_status_table(tmp_path, photo, capsys, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("GENEMAN_TEST_FAIL", "texture_coarse:2")
    with pytest.raises(Exception):
        session.start(photo, out, small_config(), stages=double_stages(), priors=None, depth_normal=None, quiet=True)
    assert main(["status", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{out}: failed") and "photo=person.png" in lines[0]
    assert "texture_coarse: RuntimeError: injected failure" in lines[1]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert lines[2].split() == ["stage", "step/total", "state", "elapsed", "last", "error"]
    assert rows["geometry_init"][1:3] == ["12/12", "done"]
    assert rows["texture_coarse"][1:3] == ["2/6", "failed"] and "injected" in " ".join(rows["texture_coarse"])
    assert rows["texture_refine"][1:3] == ["-", "pending"]


def test_status_of_a_non_run_is_an_error(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "not a geneman run folder" in capsys.readouterr().err


def test_real_cli_from_photo_to_final_then_status_says_done(tmp_path, photo, tiny_weights, capsys):
    """The four real stages on tiny weights: the run ends done with the avatar in final/, and
    `geneman export` rewrites it from the last result."""
    out = tmp_path / "out"
    code = main(["run", str(photo), "-o", str(out), *tiny_run_args(*tiny_weights)])
    err = capsys.readouterr().err
    assert code == 0, err
    m = RunStore(out).load()
    assert m.status == "done"
    assert all(m.stages[s].state == "done" for s in ("preprocess", "geometry_init", "geometry_sculpt",
                                                      "texture_coarse", "texture_refine"))
    assert (out / "04_texture_refine" / "result" / "textured.safetensors").is_file()
    final = {p.name for p in (out / "final").iterdir()}
    assert {"avatar.glb", "avatar.obj"} <= final, final
    assert main(["status", str(out)]) == 0
    assert "done" in capsys.readouterr().out
    glb = (out / "final" / "avatar.glb").read_bytes()
    (out / "final" / "avatar.glb").unlink()
    assert main(["export", str(out)]) == 0
    assert (out / "final" / "avatar.glb").read_bytes() == glb


def test_progress_plain_lines_when_not_a_terminal(caplog):
    p = Progress("geometry_init", 10, every_s=0.0, tty=False)
    with caplog.at_level(logging.INFO, logger="geneman"):
        p.start(0)
        p.update(4, {"rgb": 0.5, "sds": 0.25})
    line = caplog.messages[-1]
    assert line.startswith("geometry_init step 4/10 (40.0%) eta ")
    assert "loss=0.75" in line and "rgb=0.5" in line


def test_progress_bar_on_a_terminal(capsys):
    p = Progress("geometry_init", 10, tty=True)
    p.start(2)
    p.update(7, {"rgb": 0.5})
    p.close()
    err = capsys.readouterr().err
    assert "geometry_init" in err and "7/10" in err and "loss=0.5" in err


def test_main_leaves_the_loggers_as_it_found_them(tmp_path, capsys):
    """A process that calls main() more than once (tests, notebooks) keeps no handler bound to an old stderr."""
    before = [(list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in LOGGERS]
    assert main(["status", str(tmp_path / "nothing")]) != 0
    assert "nothing" in capsys.readouterr().err
    assert [(list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in LOGGERS] == before
