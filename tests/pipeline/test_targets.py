"""Unwritable targets are one line naming the path, exit 2, before any work: ``geneman export`` (``final/``
a file, ``final/avatar.glb`` a folder, a read-only run folder), ``geneman eval`` (``eval.json`` a folder, a
read-only run folder: before rendering) and ``geneman bench`` (OUT under a file, its files folders, a
read-only parent). Read-only folders are tested in a child process without CAP_DAC_OVERRIDE, so that
the folder's mode holds for root as for anyone."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import pytest

import stages.textured_mesh
from evaluation import protocol
from pipeline import bench as bench_module
from pipeline.cli.main import main
from pipeline.errors import InputError
from pipeline.run import session
from pipeline.run.targets import check_export, check_writable
from tests.doubles import small_config
from tests.evaluation.avatars import textured_sphere
from tests.pipeline.conftest import ROOT, write_person
from tests.pipeline.test_eval import finish_with

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1


def obey_file_modes() -> None:
    """``preexec_fn``: as root, drop CAP_DAC_OVERRIDE from the bounding set, so that the child (after exec)
    cannot write where the file modes forbid it; nothing to do for anyone else."""
    if os.geteuid() == 0 and ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")


def in_child(code: str, *args: str) -> subprocess.CompletedProcess:
    """``python -c code args`` in the repository, obeying file modes."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, preexec_fn=obey_file_modes)


@pytest.fixture
def read_only(tmp_path):
    """A folder of mode 0o555 (made writable again afterwards), checked unwritable in a child first."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    probe = in_child("import sys; open(sys.argv[1] + '/x', 'w')", str(folder))
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    yield folder
    folder.chmod(0o755)


def assert_refused(call, *parts: str) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(p in message for p in parts), message
    return message


def test_a_file_in_the_way_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_refused(lambda: check_writable(tmp_path / "file" / "out" / "run"), f"{tmp_path / 'file'} is a file",
                   f"so {tmp_path / 'file' / 'out' / 'run'} cannot be made")
    (tmp_path / "out" / "eval.json").mkdir(parents=True)
    assert_refused(lambda: check_writable(tmp_path / "out", ["bench.json", "eval.json"]),
                   f"{tmp_path / 'out' / 'eval.json'} is a folder")
    (tmp_path / "out" / "run").write_text("x")
    assert_refused(lambda: check_writable(tmp_path / "out", folders=["run"]), f"{tmp_path / 'out' / 'run'} is a file")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert_refused(lambda: check_writable(tmp_path / "gone" / "x"), f"{tmp_path / 'gone'} is a dangling link")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "final").write_text("x")
    assert_refused(lambda: check_export(tmp_path / "run", "final", ["glb"]), f"{tmp_path / 'run' / 'final'} is a file")
    (tmp_path / "run" / "final").unlink()
    (tmp_path / "run" / "final" / "turntable.mp4").mkdir(parents=True)
    assert_refused(lambda: check_export(tmp_path / "run", "final", ["glb", "turntable"]), "turntable.mp4 is a folder")
    check_export(tmp_path / "run", "final", ["glb", "preview"])  # only the files the formats write


def test_the_check_makes_nothing(tmp_path):
    check_writable(tmp_path / "a" / "b", ["bench.json"], ["run"])
    check_writable(tmp_path, ["bench.json"])
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_is_refused_for_root_too(read_only):
    code = ("import sys; from pathlib import Path; from pipeline.run.targets import check_writable\n"
            "for f in sys.argv[1:]:\n"
            "    try: check_writable(Path(f), ['eval.json'])\n"
            "    except Exception as e: print(type(e).__name__, e)\n")
    r = in_child(code, str(read_only), str(read_only / "new" / "out"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == f"InputError cannot write into {read_only}: Permission denied; choose a folder you can " \
                       "write to, or change its permissions", lines
    assert lines[1].startswith(f"InputError cannot write into {read_only} (to make {read_only / 'new' / 'out'} in it)")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``(run folder, photo)``: `geneman run --until preprocess` on a small photo, finished with a textured
    sphere as the last stage's result (as tests/pipeline/test_eval.py makes it)."""
    tmp = tmp_path_factory.mktemp("finished")
    photo = write_person(tmp / "person.png")
    session.start(photo, tmp / "out", small_config(["preprocess.canvas=64"]), priors=None, depth_normal=None,
                  quiet=True, until="preprocess")
    finish_with(tmp / "out", textured_sphere())
    return tmp / "out", photo


@pytest.fixture
def run(finished, tmp_path, monkeypatch):
    """A copy of the finished run; exporting or rendering the avatar fails the test (the checks come first)."""
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the target was checked")
    monkeypatch.setattr(stages.textured_mesh.TexturedMesh, "export", no_work)
    monkeypatch.setattr(protocol, "evaluate", no_work)
    monkeypatch.setattr(bench_module, "load_subject", no_work)
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    return out, finished[1]


def one_line(capsys, *parts: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("geneman: error: ") and "\n" not in err and "Traceback" not in err, err
    assert all(p in err for p in parts), err


def test_export_into_a_final_that_is_a_file_or_holds_a_folder(run, capsys):
    out, _ = run
    (out / "final").write_text("not a folder")
    assert main(["export", str(out)]) == 2
    one_line(capsys, f"{out / 'final'} is a file, not a folder")
    (out / "final").unlink()
    (out / "final" / "avatar.glb").mkdir(parents=True)
    assert main(["export", str(out), "--format", "glb"]) == 2
    one_line(capsys, f"{out / 'final' / 'avatar.glb'} is a folder")


def test_eval_with_eval_json_a_folder_stops_before_rendering(run, capsys):
    out, photo = run
    (out / "eval.json").mkdir()
    assert main(["eval", str(out), "--photo", str(photo), "--no-clip", "--resolution", "16", "--quiet"]) == 2
    one_line(capsys, f"{out / 'eval.json'} is a folder")


def test_bench_out_under_a_file_or_with_a_folder_for_a_file(run, tmp_path, capsys):
    subject = tmp_path / "subject.glb"
    subject.write_bytes(b"")  # never read: the targets are checked first
    (tmp_path / "file").write_text("x")
    (tmp_path / "b" / "bench.json").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "run").write_text("x")
    for out, what in ((tmp_path / "file" / "out", f"{tmp_path / 'file'} is a file"),
                      (tmp_path / "b", f"{tmp_path / 'b' / 'bench.json'} is a folder"),
                      (tmp_path / "c", f"{tmp_path / 'c' / 'run'} is a file")):
        assert main(["bench", "--subject", str(subject), "-o", str(out), "--quiet"]) == 2, what
        one_line(capsys, what)


@pytest.mark.slow
def test_a_read_only_run_folder_is_exit_2_for_export_eval_and_bench(run, read_only, tmp_path):
    """The real commands in a child process that obeys file modes (as root too)."""
    out, photo = run
    ro_run = read_only / "run"
    read_only.chmod(0o755)
    shutil.copytree(out, ro_run)
    ro_run.chmod(0o555)
    read_only.chmod(0o555)
    code = ("import sys; from pipeline.cli.main import main\n"
            "for argv in (['export', sys.argv[1]], ['eval', sys.argv[1], '--photo', sys.argv[2], '--no-clip',\n"
            "             '--resolution', '16', '--quiet'], ['bench', '--subject', 'front_back', '-o', sys.argv[3]]):\n"
            "    print(main(argv), flush=True)\n")
    try:
        r = in_child(code, str(ro_run), str(photo), str(read_only / "bench"))
    finally:
        ro_run.chmod(0o755)
    assert r.stdout.split() == ["2", "2", "2"], (r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("geneman: error: ")]
    assert len(errors) == 3 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot write into {ro_run}: Permission denied" in errors[0]
    assert f"cannot write into {ro_run}: Permission denied" in errors[1]
    assert f"cannot write into {read_only} (to make {read_only / 'bench'} in it)" in errors[2]
    assert not (ro_run / "eval.json").exists() and not (ro_run / "final").exists()
