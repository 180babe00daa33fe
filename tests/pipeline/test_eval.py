"""`geneman eval`: a run folder made by the real preprocess (`--until preprocess`) whose last stage's
result is a TexturedMesh saved here; eval.json's fields and ranges, a known answer, the bad inputs."""
import json
import logging
import shutil

import pytest

import stages.texture_refine
from pipeline.cli.main import main
from pipeline.run import session
from pipeline.run.progress import Progress
from pipeline.run.store import RunStore, write_result_digest
from priors import tiny
from stages.inputs import Inputs
from stages.render.cameras import turntable
from stages.textured_mesh import TexturedMesh
from tests.doubles import small_config
from tests.evaluation.avatars import textured_sphere
from tests.pipeline.conftest import write_person

RES = 32


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """``(run folder, photo)``: `geneman run --until preprocess` on a small RGBA photo (no weights needed)."""
    tmp = tmp_path_factory.mktemp("run")
    photo = write_person(tmp / "person.png")
    cfg = small_config(["preprocess.canvas=64"])
    session.start(photo, tmp / "out", cfg, priors=None, depth_normal=None, quiet=True, until="preprocess")
    return tmp / "out", photo


def finish_with(out, mesh: TexturedMesh) -> None:
    """What the runner leaves after stage 4: its result folder (with its DIGEST.json) and every stage done in
    run.json."""
    folder = out / stages.texture_refine.FOLDER / "result"
    folder.mkdir(parents=True)
    mesh.save(folder)
    write_result_digest(folder, {})
    store = RunStore(out)
    store.load()
    for name in ("geometry_init", "geometry_sculpt", "texture_coarse", "texture_refine"):
        store.stage(name).state = "done"
    store.manifest.status = "done"
    store.save()


@pytest.fixture
def run(preprocessed, tmp_path):
    """A copy of the preprocessed run, finished with a textured sphere; ``(run folder, photo)``."""
    out = tmp_path / "out"
    shutil.copytree(preprocessed[0], out)
    finish_with(out, textured_sphere())
    return out, preprocessed[1]


def geneman_eval(out, photo, weights, *extra):
    return main(["eval", str(out), "--photo", str(photo), "--weights", str(weights), "--resolution", str(RES),
                 "--quiet", *extra])


def test_eval_writes_the_protocols_numbers(run, tiny_weights, capsys):
    out, photo = run
    assert geneman_eval(out, photo, tiny_weights[0]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert f"wrote {out / 'eval.json'}" in printed and "clip_similarity=" in printed
    assert report["views"] == 120 and len(report["clip_per_view"]) == 120
    assert all(-1 <= c <= 1 for c in report["clip_per_view"])
    assert report["clip_similarity"] == pytest.approx(sum(report["clip_per_view"]) / 120)
    assert 0 < report["psnr_ref"] < 100 and report["lpips_ref"] > 0
    assert report["models"] == {"clip": "openai/clip-vit-large-patch14", "lpips": "lpips"}
    assert report["photo"]["matches_run"] is True and report["photo"]["reference"].startswith("00_preprocess/result")
    p = report["protocol"]
    assert (p["views"], p["elevation_deg"], p["distance"], p["fovy_deg"], p["resolution"]) == (120, 0.0, 3.0, 20.0, RES)
    assert report["notes"] == [] and report["device"] == "cpu"


def test_a_preprocessed_photo_equal_to_the_reference_view_scores_perfectly(run, tiny_weights):
    """The run's own preprocess result is what view 0 is compared with: make it the reference render itself."""
    out, photo = run
    view = textured_sphere().render(turntable(120)[0], RES, RES)
    Inputs(rgb=view["rgb"][0].clamp(0, 1), mask=view["mask"][0, ..., 0]).save(out / "00_preprocess" / "result")
    write_result_digest(out / "00_preprocess" / "result", {})
    assert geneman_eval(out, photo, tiny_weights[0]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["psnr_ref"] is None and any("PSNR is infinite" in n for n in report["notes"])
    assert report["lpips_ref"] == pytest.approx(0.0, abs=1e-9)  # float rounding of two forward passes
    assert report["clip_per_view"][0] == pytest.approx(1.0, abs=1e-5)
    assert min(report["clip_per_view"]) < 1 - 1e-3


def test_another_photo_is_preprocessed_the_runs_way_with_a_warning(run, tiny_weights, tmp_path, capsys):
    out, _ = run
    other = write_person(tmp_path / "other.png", shade=90)
    assert geneman_eval(out, other, tiny_weights[0]) == 0
    assert "is not the photo this run was made from" in capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert report["photo"]["matches_run"] is False and "preprocessed with the run's" in report["photo"]["reference"]
    assert 0 < report["psnr_ref"] < 100


def test_missing_lpips_is_a_note_and_no_clip_needs_no_clip_weights(run, tmp_path):
    out, photo = run
    only_clip, nothing = tmp_path / "only_clip", tmp_path / "nothing"
    tiny.clip(0).save_pretrained(only_clip / "openai" / "clip-vit-large-patch14")
    nothing.mkdir()
    assert geneman_eval(out, photo, only_clip) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["lpips_ref"] is None and report["clip_similarity"] is not None and report["psnr_ref"] > 0
    assert any(n.startswith("lpips_ref: not measured") and "vgg16.safetensors" in n for n in report["notes"])
    assert geneman_eval(out, photo, nothing, "--no-clip") == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["clip_similarity"] is None and report["clip_per_view"] is None and report["models"]["clip"] is None
    assert "clip_similarity: not measured (--no-clip)" in report["notes"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("geneman: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_missing_clip_stops_before_rendering_naming_id_file_and_folder(run, tmp_path, capsys):
    out, photo = run
    assert geneman_eval(out, photo, tmp_path) == 2
    err = one_line_error(capsys)
    assert "openai/clip-vit-large-patch14" in err and "model.safetensors" in err and "--no-clip" in err
    assert str(tmp_path / "openai" / "clip-vit-large-patch14") in err
    assert not (out / "eval.json").exists()


def test_bad_input_is_one_line_exit_2_and_no_eval_json(run, preprocessed, tiny_weights, tmp_path, capsys):
    out, photo = run
    weights = tiny_weights[0]
    assert geneman_eval(tmp_path / "nowhere", photo, weights) == 2
    assert "is not a geneman run folder" in one_line_error(capsys)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(preprocessed[0], unfinished)
    assert geneman_eval(unfinished, photo, weights) == 2
    err = one_line_error(capsys)
    assert f"{unfinished} has no finished texture_refine result" in err and f"geneman resume {unfinished}" in err
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    assert geneman_eval(out, broken, weights) == 2
    assert "is not an image that can be read" in one_line_error(capsys)
    assert geneman_eval(out, tmp_path / "missing.png", weights) == 2
    assert "photo not found" in one_line_error(capsys)
    assert geneman_eval(out, photo, weights, "--resolution", "8") == 2
    assert "--resolution 8 is out of range" in one_line_error(capsys)
    assert not any(p.name == "eval.json" for p in tmp_path.rglob("*"))


def test_progress_counts_views_without_losses(caplog):
    p = Progress("eval", 120, every_s=0.0, tty=False, unit="view")
    with caplog.at_level(logging.INFO, logger="geneman"):
        p.start(0)
        p.update(8, {})
    assert caplog.messages[0] == "eval: start at view 0/120"
    assert caplog.messages[-1].startswith("eval view 8/120 (6.7%) eta ") and "loss" not in caplog.messages[-1]


def test_the_run_never_needs_the_clip_weight(tiny_weights, tmp_path):
    """`geneman run` checks only the stages' weights: the eval group is not among them."""
    from priors.weights import STAGES, check
    cfg = small_config([f"priors.weights_dir={tiny_weights[0]}"]).priors
    assert "clip" not in [row.spec.key for row in check(cfg, STAGES)]
    assert [row.spec.key for row in check(cfg, ["eval"])] == ["clip", "lpips"]


def test_the_clip_id_is_no_part_of_the_stage_hashes(tmp_path):
    """Naming another CLIP for eval must not redo (or invalidate) a run's stages."""
    from pipeline.run.runner import Runner

    key = [Runner(RunStore(tmp_path), small_config(sets))._prior_key() for sets in ([], ["priors.clip_eval=a/b"])]
    assert key[0] == key[1] and "clip_eval" not in key[0]
