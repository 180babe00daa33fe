"""Config schema, presets and overrides: what loads, and how what does not load is reported."""
from pathlib import Path

import pytest
import yaml

from pipeline import config_doc
from pipeline.cli.main import main
from pipeline.config import PRESETS, RunConfig, load_config, preset_path, to_dict
from pipeline.errors import ConfigError
from stages.schedule import Ramp, milestone_value, ramp_value

ROOT = Path(__file__).resolve().parents[2]


def flat_keys(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        if isinstance(v, dict) and set(v) != {"start", "end", "begin", "until"}:
            keys |= flat_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_file_carries_every_key(preset):
    data = yaml.safe_load(preset_path(preset).read_text())
    schema = {key for key, _, _ in config_doc.leaves(RunConfig())}
    assert flat_keys(data) == schema


def test_release_preset_equals_schema_defaults():
    assert to_dict(load_config("release")) == to_dict(RunConfig())


def test_release_values_from_the_public_code():
    cfg = load_config("release")
    gi = cfg.geometry_init
    assert (gi.steps, gi.resolutions, gi.resolution_milestones, gi.n_ref) == (5000, [128, 384], [3000], 4)
    assert (gi.lambda_rgb.start, gi.lambda_mask.start, gi.lambda_depth.start) == (1000.0, 0.05, 10.0)
    assert ramp_value(gi.guidance_2d.min_t, 0) == 0.7 and ramp_value(gi.guidance_2d.min_t, 200) == 0.2
    assert ramp_value(gi.lambda_3d_normal_smooth, 4000) == 5.0 and ramp_value(gi.lambda_3d_normal_smooth, 4001) == 2.0
    gs = cfg.geometry_sculpt
    assert (gs.steps, gs.tet_grid, gs.lambda_normal.start, gs.lambda_sdf.start) == (3000, 512, 3000.0, 1500.0)
    assert ramp_value(gs.normal_guidance.max_t, 2001) == pytest.approx(0.21)
    assert ramp_value(gs.lambda_laplacian, 2000) == 0.0 and ramp_value(gs.lambda_laplacian, 2001) == 5000.0
    assert gs.optim.lr == 2e-5 and gs.optim.eps == 1e-15 and gs.parts.ratios == [0.7, 0.1, 0.1, 0.1]
    assert (cfg.texture_coarse.steps, cfg.texture_refine.steps, cfg.texture_refine.edit_every) == (2000, 10000, 30)


def test_paper_preset_differs_where_the_paper_does():
    paper, release = load_config("paper"), load_config("release")
    assert paper.geometry_init.resolutions == [256, 384] and paper.geometry_init.depth_loss == "pearson"
    assert (paper.texture_coarse.steps, paper.texture_refine.steps) == (10000, 1000)
    assert paper.texture_coarse.multiview_tiles > 1 and release.texture_coarse.multiview_tiles == 1
    # reference losses: the paper's MSE forms in place of the release's 1 - cosine (normals) and L1 (RGB)
    assert (paper.geometry_sculpt.lambda_normal.start, paper.geometry_sculpt.lambda_normal_mse.start) == (0.0, 4500.0)
    assert (release.geometry_sculpt.lambda_normal.start, release.geometry_sculpt.lambda_normal_mse.start) == (3000.0, 0)
    assert (paper.texture_coarse.lambda_rgb.start, paper.texture_coarse.lambda_rgb_mse.start) == (0.0, 1000.0)
    assert (release.texture_coarse.lambda_rgb.start, release.texture_coarse.lambda_rgb_mse.start) == (1000.0, 0.0)


def test_set_overrides_and_scalar_for_a_schedule():
    cfg = load_config("release", None, ["geometry_init.steps=7", "geometry_init.lambda_rgb=3.5",
                                         "geometry_init.camera.elevation_range=[0, 10]", "prompt=a man in a coat"])
    assert cfg.geometry_init.steps == 7
    assert cfg.geometry_init.lambda_rgb == Ramp(3.5, 3.5, 0, 0)
    assert cfg.geometry_init.camera.elevation_range == [0.0, 10.0]
    assert cfg.prompt == "a man in a coat"


def test_config_file_layer_between_preset_and_set(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("geometry_init:\n  steps: 11\n  n_ref: 3\n")
    cfg = load_config("cpu", f, ["geometry_init.n_ref=5"])
    assert (cfg.geometry_init.steps, cfg.geometry_init.n_ref, cfg.device) == (11, 5, "cpu")


@pytest.mark.parametrize("sets, words", [
    (["geometry_init.stepz=3"], ["geometry_init.stepz", "did you mean 'geometry_init.steps'"]),
    (["geometry_int.steps=3"], ["geometry_int", "did you mean 'geometry_init'"]),
    (["geometry_init.steps=many"], ["geometry_init.steps", "many"]),
    (["geometry_init.steps=0"], ["geometry_init.steps must be at least 1"]),
    (["geometry_init.resolutions=[64]"], ["geometry_init.resolutions", "resolution_milestones"]),
    (["geometry_init=3"], ["'geometry_init' is a section"]),
    (["export.formats=[fbx]"], ["fbx"]),
    (["export.formats=[glb, mp4]"], ["export.formats", "'mp4'", "glb, obj, turntable, preview"]),
    (["export.formats=[]"], ["export.formats is empty", "glb, obj, turntable, preview"]),
    (["export.turntable_resolution=513"], ["export.turntable_resolution=513", "even"]),
    (["export.turntable_fps=0"], ["export.turntable_fps=0 is out of range"]),
    (["nonsense"], ["a.b=value"]),
    (["preprocess.segmentation=mediapip"], ["preprocess.segmentation='mediapip'", "auto, mediapipe, none",
                                            "did you mean 'mediapipe'"]),
    (["geometry_init.depth_loss=l2"], ["geometry_init.depth_loss", "ls_mse, pearson"]),
    (["geometry_sculpt.optim.name=sgd"], ["geometry_sculpt.optim.name='sgd'", "adam, adamw"]),
    (["priors.dtype=fp8"], ["priors.dtype", "auto, fp32, fp16, bf16"]),
    (["priors.attention=flash"], ["priors.attention", "sdpa, xformers"]),
    (["device=gpu"], ["device='gpu'", "auto, cpu, cuda or cuda:N"]),
    (["preprocess.fill=5"], ["preprocess.fill=5.0 is out of range", "between 0.05 and 1.0"]),
    (["preprocess.canvas=-3"], ["preprocess.canvas=-3", "at least 64"]),
    (["preprocess.min_mask_fraction=-0.1"], ["preprocess.min_mask_fraction", "between 0.0 and 0.5"]),
    (["preprocess.fill=.nan"], ["preprocess.fill=nan is out of range"]),
])
def test_bad_values_name_the_key(sets, words):
    with pytest.raises(ConfigError) as e:
        load_config("release", None, sets)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("sets", [["device=cuda:1"], ["device=cpu"], ["preprocess.fill=1.0"],
                                  ["preprocess.min_mask_fraction=0"], ["priors.cfg_variant=standard"]])
def test_values_at_the_edges_of_what_is_allowed_load(sets):
    load_config("release", None, sets)


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'paper'"):
        load_config("papr")
    with pytest.raises(ConfigError, match="not found"):
        load_config("release", tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("geometry_init: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("release", bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config("release", scalar)


def test_cli_config_error_is_one_line_exit_2(tmp_path, capsys):
    code = main(["run", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--set", "geometry_init.stepz=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "did you mean 'geometry_init.steps'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_every_field_has_a_docstring():
    missing = [key for key, owner, name in config_doc.leaves(RunConfig()) if not config_doc.field_docs(owner).get(name)]
    assert missing == []


def test_config_doc_is_current():
    assert (ROOT / "docs" / "CONFIG.md").read_text() == config_doc.render(), \
        "docs/CONFIG.md is stale: python -m pipeline.config_doc > docs/CONFIG.md"


def test_schedules():
    r = Ramp(0.85, 0.5, 0, 200)
    assert [ramp_value(r, s) for s in (0, 200, 5000)] == [0.85, 0.5, 0.5]
    assert ramp_value(r, 100) == pytest.approx(0.675)
    jump = Ramp(1.0, 10.0, 2000, 2001)
    assert (ramp_value(jump, 2000), ramp_value(jump, 2001)) == (1.0, 10.0)
    assert [milestone_value([128, 384], [3000], s) for s in (0, 2999, 3000)] == [128, 128, 384]
    with pytest.raises(ValueError):
        milestone_value([1, 2, 3], [5], 0)
