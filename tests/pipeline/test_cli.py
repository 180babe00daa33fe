"""CLI flags that change what is printed (--debug, --quiet) and `geneman export` of a finished run."""
import json

import pytest

from pipeline.cli.main import EXPORT_FORMATS, main
from pipeline.logs import setup_logging
from pipeline.run import session
from pipeline.run.export import export_run
from tests.doubles import double_stages, small_config


def test_debug_adds_the_traceback_to_the_one_line_error(tmp_path, capsys):
    args = ["run", str(tmp_path / "nope.png"), "-o", str(tmp_path / "out"), "--preset", "cpu"]
    assert main(args) == 2
    plain = capsys.readouterr().err
    assert main([*args, "--debug"]) == 2
    debug = capsys.readouterr().err
    assert "Traceback" not in plain
    assert plain.strip() == "geneman: error: photo not found: " + str(tmp_path / "nope.png")
    assert "Traceback" in debug and "InputError: photo not found" in debug
    assert debug.rstrip().endswith(plain.strip())


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_drops_progress_and_info_lines(tmp_path, photo, capsys, quiet):
    """What `geneman run --quiet` sets up (log level, quiet progress), here around test-double stages."""
    restore = setup_logging(False, quiet)
    try:
        session.start(photo, tmp_path / "out", small_config(), stages=double_stages(), priors=None, depth_normal=None,
                      quiet=quiet)
    finally:
        restore()
    err = capsys.readouterr().err
    assert ("geometry_init step 12/12 (100.0%)" in err) is not quiet
    assert (" INFO " in err) is not quiet


def test_export_rewrites_final_from_the_last_result(tmp_path, photo):
    out = tmp_path / "out"
    session.start(photo, out, small_config(), stages=double_stages(), priors=None, depth_normal=None, quiet=True)
    first = (out / "final" / "weights.txt").read_text()
    (out / "final" / "weights.txt").unlink()
    paths = export_run(out, ["glb"], stages=double_stages())
    assert paths[0] == out / "final" / "weights.txt" and paths[0].read_text() == first


def _export_call(out):
    """The formats and export config the double's Result.export was last called with."""
    return json.loads((out / "final" / "export.json").read_text())


def test_export_formats_and_sizes_come_from_the_run_config(tmp_path, photo):
    out = tmp_path / "out"
    cfg = small_config(["export.formats=[preview, glb]", "export.turntable_resolution=64", "export.turntable_fps=12"])
    session.start(photo, out, cfg, stages=double_stages(), priors=None, depth_normal=None, quiet=True)
    ran = _export_call(out)  # the runner's export after the last stage
    assert ran["formats"] == ["preview", "glb"] and ran["cfg"]["turntable_resolution"] == 64
    (out / "final" / "export.json").unlink()
    export_run(out, None, stages=double_stages())
    assert _export_call(out) == ran
    export_run(out, ["obj"], stages=double_stages())
    call = _export_call(out)
    assert call["formats"] == ["obj"] and call["cfg"]["turntable_fps"] == 12


def test_export_command_formats(capsys):
    from stages.final import FORMATS

    assert EXPORT_FORMATS == FORMATS
    with pytest.raises(SystemExit) as e:
        main(["export", "somewhere", "--format", "fbx"])
    assert e.value.code == 2 and "invalid choice: 'fbx'" in capsys.readouterr().err
