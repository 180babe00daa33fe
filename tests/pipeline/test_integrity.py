"""Integrity of a run folder (issue 26, items 2-4): stage results carry their digest and those of the
results they were built from; config.yaml is complete or refused; a redone stage redoes every later one."""
import json
import logging
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.cli.main import main
from pipeline.errors import ConfigError, GenemanError
from pipeline.run import session
from pipeline.run.export import export_run
from tests.doubles import double_stages, small_config
from tests.pipeline.conftest import write_person

STAGES = ("01_geometry_init", "02_geometry_sculpt", "03_texture_coarse", "04_texture_refine")
NAMES = ("geometry_init", "geometry_sculpt", "texture_coarse", "texture_refine")


def run_doubles(photo, out, sets=(), **kw):
    return session.start(photo, out, small_config(list(sets)), stages=double_stages(), priors=None, depth_normal=None,
                         quiet=True, **kw)


def resume_doubles(out):
    return session.resume(out, stages=double_stages(), priors=None, depth_normal=None, quiet=True)


def finished(out):
    return {k: v["finished"] for k, v in json.loads((out / "run.json").read_text())["stages"].items()}


def result_bytes(out):
    return {s: (out / s / "result" / "weights.safetensors").read_bytes() for s in STAGES}


def snapshot(out):
    """Every file of the run folder and its bytes (the lock aside)."""
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "geneman"]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """``(run folder, photo)``: a finished run of the test-double stages, copied by each test that changes it."""
    tmp = tmp_path_factory.mktemp("integrity")
    photo = write_person(tmp / "person.png")
    run_doubles(photo, tmp / "out")
    return tmp / "out", photo


@pytest.fixture
def run(done_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(done_run[0], out)
    return out, done_run[1]


def alter(path):
    """Set some values of a saved result to 5.0: the file still loads, with other numbers."""
    weights = load_file(str(path))["weights"]
    weights.view(-1)[:5] = 5.0
    save_file({"weights": weights.contiguous()}, str(path))


# (2) stage results carry their digest


def test_every_result_records_its_files_and_the_digests_it_was_built_from(run):
    out, _ = run
    records = {name: json.loads((out / folder / "result" / "DIGEST.json").read_text())
               for name, folder in zip(("preprocess",) + NAMES, ("00_preprocess",) + STAGES)}
    assert records["preprocess"]["upstream"] == {}
    assert set(records["geometry_init"]["upstream"]) == {"preprocess"}
    for before, name in zip(NAMES, NAMES[1:]):
        assert records[name]["upstream"] == {"preprocess": records["preprocess"]["digest"],
                                             before: records[before]["digest"]}
    assert set(records["texture_refine"]["files"]) == {"weights.safetensors"}


def damage_result(path, damage: str) -> None:
    """Alter or truncate a result file, or remove its folder's DIGEST.json."""
    if damage == "altered":
        alter(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        (path.parent / "DIGEST.json").unlink()


@pytest.mark.parametrize("damage", ["altered", "truncated", "no digest"])
def test_resume_redoes_a_damaged_result_and_every_later_stage_with_one_warning(run, damage, caplog):
    out, _ = run
    expected, before = result_bytes(out), finished(out)
    damage_result(out / "02_geometry_sculpt" / "result" / "weights.safetensors", damage)
    time.sleep(1.1)  # timestamps have one-second resolution
    with caplog.at_level(logging.WARNING, logger="geneman"):
        resume_doubles(out)
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "geometry_sculpt" in warned[0] and "redoing" in warned[0], warned
    after = finished(out)
    assert after["geometry_init"] == before["geometry_init"]
    assert all(after[name] != before[name] for name in NAMES[1:])
    assert result_bytes(out) == expected


@pytest.mark.parametrize("damage", ["altered", "truncated", "no digest"])
def test_export_and_eval_refuse_a_damaged_last_result_in_one_line(run, damage, capsys):
    out, photo = run
    damage_result(out / "04_texture_refine" / "result" / "weights.safetensors", damage)
    final = snapshot(out / "final")
    assert main(["export", str(out)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "04_texture_refine/result" in line and f"geneman resume {out}" in line
    with pytest.raises(GenemanError) as e:
        export_run(out, None, stages=double_stages())
    assert e.value.exit_code == 2
    assert main(["eval", str(out), "--photo", str(photo), "--no-clip", "--quiet"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "04_texture_refine/result" in line and f"geneman resume {out}" in line
    assert snapshot(out / "final") == final and not (out / "eval.json").exists()


def test_eval_refuses_an_altered_preprocess_result(run, capsys):
    out, photo = run
    path = out / "00_preprocess" / "result" / "inputs.safetensors"
    tensors = load_file(str(path))
    tensors["rgb"].view(-1)[:100] = 0.5
    save_file(tensors, str(path))
    assert main(["eval", str(out), "--photo", str(photo), "--no-clip", "--quiet"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "00_preprocess/result" in line and "geneman resume" in line


# (3) config.yaml complete or refused


def cut_after(text: str, line: str) -> str:
    """``text`` up to and including the line ``line`` (a cut at a line boundary)."""
    lines = text.splitlines(keepends=True)
    return "".join(lines[: lines.index(line + "\n") + 1])


@pytest.mark.parametrize("how", ["section cut", "key removed"])
def test_a_damaged_config_yaml_is_refused_naming_the_key_and_nothing_is_rewritten(run, how, capsys):
    out, photo = run
    text = (out / "config.yaml").read_text()
    if how == "section cut":
        damaged = cut_after(text, "texture_refine:")  # the section's keys and export: gone
    else:
        head, tail = text.split("texture_refine:\n")
        damaged = head + "texture_refine:\n" + tail.replace("  steps: 6\n", "", 1)
    assert damaged != text
    (out / "config.yaml").write_text(damaged)
    before = snapshot(out)
    expected = f"{out / 'config.yaml'}: key texture_refine.steps is missing; the file is damaged"
    with pytest.raises(ConfigError, match="key texture_refine.steps is missing") as e:
        resume_doubles(out)
    assert str(e.value).startswith(expected) and e.value.exit_code == 2
    for command in (["export", str(out)], ["eval", str(out), "--photo", str(photo), "--no-clip", "--quiet"],
                    ["resume", str(out)]):
        assert main(command) == 2
        assert one_line_error(capsys.readouterr().err).startswith(f"geneman: error: {expected}")
    assert snapshot(out) == before


def test_a_missing_section_is_named(run):
    out, _ = run
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.split("export:\n")[0])  # cut at the line of the last section
    with pytest.raises(ConfigError, match="config.yaml: section export is missing"):
        session.load_run_config(out)


# (4) a redone stage redoes every later one


def test_a_deleted_stage_folder_redoes_that_stage_and_every_later_one(run):
    out, _ = run
    before, expected = finished(out), result_bytes(out)
    shutil.rmtree(out / "02_geometry_sculpt")
    time.sleep(1.1)
    resume_doubles(out)
    after = finished(out)
    assert after["geometry_init"] == before["geometry_init"]
    assert all(after[name] != before[name] for name in NAMES[1:]), (before, after)
    assert result_bytes(out) == expected


def test_a_result_built_from_another_upstream_result_is_redone(run, tmp_path, caplog):
    """texture_coarse's result swapped for another run's (whole, with its own digest): texture_refine,
    built on the old one, is redone."""
    out, photo = run
    other = tmp_path / "other"
    run_doubles(photo, other, ["texture_coarse.steps=4"])
    shutil.rmtree(out / "03_texture_coarse" / "result")
    shutil.copytree(other / "03_texture_coarse" / "result", out / "03_texture_coarse" / "result")
    before = finished(out)
    time.sleep(1.1)
    with caplog.at_level(logging.WARNING, logger="geneman"):
        resume_doubles(out)
    after = finished(out)
    assert [name for name in NAMES if after[name] != before[name]] == ["texture_refine"]
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "texture_refine" in warned[0], warned
    assert (out / "04_texture_refine" / "result" / "weights.safetensors").read_bytes() == \
        (other / "04_texture_refine" / "result" / "weights.safetensors").read_bytes()
    assert torch.equal(load_file(str(out / "03_texture_coarse" / "result" / "weights.safetensors"))["weights"],
                       load_file(str(other / "03_texture_coarse" / "result" / "weights.safetensors"))["weights"])
