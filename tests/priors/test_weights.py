"""Weight resolution, the missing-weight error, `weights check` output, loading from a folder."""
import dataclasses

import pytest
import torch

from priors import tiny
from priors.config import Config
from priors.prior_2d import StableDiffusionSDS
from priors.registry import PriorSet
from priors.sapiens import SapiensEstimator, load_estimators
from priors.weights import (
    STAGES,
    MissingWeightError,
    check,
    ensure_available,
    format_report,
    pull,
    required_weights,
    resolve,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    cfg = tiny.write_weights(folder)
    cfg.trust_weights = True  # the tiny Sapiens files are TorchScript made here, with no published sha256
    return cfg


def test_required_weights_per_stage():
    cfg = Config()
    keys = [s.key for s in required_weights(cfg, ["geometry_init", "texture_coarse"])]
    assert keys == ["sd15", "prior_2d", "prior_3d"]
    assert [s.key for s in required_weights(cfg, ["texture_refine"])] == ["normal_aligned", "prior_2d",
                                                                         "controlnet_normal"]
    assert len(required_weights(cfg)) == 10
    assert "clip" not in [s.key for s in required_weights(cfg)]  # a run never needs eval's CLIP
    assert [s.key for s in required_weights(cfg, ["eval"])] == ["clip", "lpips"]
    assert required_weights(cfg, ["eval"])[0].repo_id == "openai/clip-vit-large-patch14"
    with pytest.raises(ValueError, match="unknown stage"):
        required_weights(cfg, ["stage_5"])


def test_weights_of_losses_weighted_zero_throughout_are_not_needed():
    from pipeline.config import load_config

    def keys(sets, stages=("geometry_init", "geometry_sculpt", "texture_coarse")):
        run = load_config("release", None, sets)
        return [s.key for s in required_weights(run.priors, stages, run)]

    assert keys([]) == ["sd15", "prior_2d", "prior_3d", "normal_adapted", "depth_adapted", "lpips"]
    no_3d = ["geometry_init.lambda_sds_3d=0", "texture_coarse.lambda_sds_3d=0"]
    assert keys(no_3d) == ["sd15", "prior_2d", "normal_adapted", "depth_adapted", "lpips"]
    assert sorted(keys(no_3d[:1])) == sorted(keys([]))  # stage 3 still uses the 3D prior
    assert keys(["geometry_sculpt.lambda_sds_depth=0"], ("geometry_sculpt",)) == ["normal_adapted", "lpips"]
    no_lpips = ["geometry_sculpt.lambda_normal_lpips=0", "texture_refine.lambda_lpips=0"]
    assert "lpips" not in keys(no_lpips, ("geometry_sculpt", "texture_refine"))
    # stage 4 uses LPIPS when it is there and runs without it: its weight alone does not require it
    assert "lpips" not in keys(no_lpips[:1], ("geometry_sculpt", "texture_refine"))
    assert "lpips" in keys(no_lpips[1:], ("geometry_sculpt", "texture_refine"))
    # a schedule that is 0 at first but not later still needs its weights
    ramp = "geometry_init.lambda_sds_3d={start: 0, end: 0.3, begin: 100, until: 200}"
    assert keys([ramp], ("geometry_init",)) == ["sd15", "prior_2d", "prior_3d"]
    assert keys(["geometry_init.lambda_sds=0", "geometry_init.lambda_sds_3d=0"], ("geometry_init",)) == []


def test_missing_weight_error_names_id_file_and_folder(tmp_path):
    cfg = Config(weights_dir=str(tmp_path))
    spec = required_weights(cfg, ["geometry_sculpt"])[0]
    with pytest.raises(MissingWeightError) as err:
        resolve(cfg, spec)
    msg = str(err.value)
    assert "\n" not in msg
    assert "xanderhuang/normal-adapted-sd1.5" in msg and "unet/config.json" in msg
    assert str(tmp_path / "xanderhuang" / "normal-adapted-sd1.5") in msg and "geneman weights pull" in msg


def test_run_stops_naming_every_missing_weight(tmp_path):
    with pytest.raises(MissingWeightError) as err:
        ensure_available(Config(weights_dir=str(tmp_path)), ["geometry_init"])
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and "wwt117/GeneMAN" in lines[1] and "last.ckpt" in lines[2]


def test_optional_sapiens_does_not_stop_the_run(tmp_path):
    cfg = Config(weights_dir=str(tmp_path), sapiens_optional=True)
    ensure_available(cfg, ["preprocess"])
    report = format_report(check(cfg, ["preprocess"]))
    assert "sapiens_normal     optional" in report and report.splitlines()[-1] == "0/2 weights found"
    with pytest.raises(MissingWeightError):
        ensure_available(Config(weights_dir=str(tmp_path)), ["preprocess"])


def test_hub_cache_lookup_reports_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    rows = check(Config(), ["preprocess"])
    assert [r.found for r in rows] == [False, False]
    assert "Hugging Face cache" in rows[0].folder


def test_weights_check_report(weights, tmp_path):
    rows = check(weights)
    assert all(r.found for r in rows)
    report = format_report(rows)
    assert report.splitlines()[-1] == "10/10 weights found"
    (tmp_path / "wwt117" / "GeneMAN").mkdir(parents=True)
    empty = format_report(check(Config(weights_dir=str(tmp_path)), ["texture_refine"]))
    assert "prior_2d           MISSING" in empty
    assert "missing file: pretrained_models/geneman-prior2d/config.json" in empty
    assert empty.splitlines()[-1].startswith("0/3 weights found; run `geneman weights pull`")  # LPIPS optional


def test_save_pretrained_then_from_pretrained_offline(weights):
    loaded = StableDiffusionSDS.from_pretrained(weights, "cpu")
    ref = tiny.sd_parts(0)
    for ours, theirs in ((loaded.unet, ref.unet), (loaded.vae, ref.vae), (loaded.text.text_encoder, ref.text_encoder)):
        for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, msg=k)
    assert loaded.text.tokenizer("a man").input_ids == ref.tokenizer("a man").input_ids
    assert not any(p.requires_grad for p in loaded.unet.parameters())


def test_prior_set_loads_lazily_and_once(weights):
    priors = PriorSet(dataclasses.replace(weights, cfg_variant="release"), "cpu")
    assert priors.loaded() == []
    priors.check(STAGES)
    first = priors.prior_2d
    assert first.cfg_variant == "release"
    assert priors.prior_2d is first and priors.loaded() == ["prior_2d"]
    priors.prior_3d.set_reference(torch.rand(1, 3, 32, 32), 0.0, 0.0, 3.0)
    assert priors.hybrid.prior_2d is first
    assert priors.sdedit.controlnet.config.in_channels == 4
    assert priors.adapted.normal.unet is not priors.adapted.depth.unet
    assert priors.adapted.normal.cfg_variant == "standard" and priors.sdedit.cfg_variant == "standard"
    assert set(priors.sapiens) == {"normal", "depth"}


def test_priors_weighted_zero_are_never_loaded_nor_needed(weights, tmp_path):
    """Without the 3D prior's and the depth-adapted model's weights, a run that weights them 0 passes
    the check, and the hybrid / adapted guidance work until something asks for the missing one."""
    import shutil
    from types import SimpleNamespace as NS

    from priors.hybrid import Term
    from stages.schedule import Ramp

    folder = tmp_path / "w"
    shutil.copytree(weights.weights_dir, folder)
    cfg = dataclasses.replace(weights, weights_dir=str(folder))
    shutil.rmtree(folder / cfg.prior_3d_diffusers)
    shutil.rmtree(folder / cfg.depth_adapted)
    zero = Ramp(0.0, 0.0)
    run = NS(geometry_init=NS(lambda_sds=Ramp(0.1, 0.1), lambda_sds_3d=zero),
             geometry_sculpt=NS(lambda_sds_normal=Ramp(1.0, 1.0), lambda_sds_depth=zero, lambda_normal_lpips=zero))
    priors = PriorSet(cfg, "cpu")
    priors.check(["geometry_init", "geometry_sculpt"], run)
    with pytest.raises(MissingWeightError, match="prior_3d"):
        priors.check(["geometry_init"])  # without the run config both priors are needed
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    emb = priors.prior_2d.embed("a person")
    terms = (Term(0.1, 7.5, (0.2, 0.8), 32), Term(0.0, 5.0, (0.2, 0.8)))
    out = priors.hybrid(images, emb, *(torch.zeros(1),) * 3, *terms, generator=torch.Generator().manual_seed(0))
    assert set(out.terms) == {"sds"} and "prior_3d" not in priors.loaded()
    normal = torch.nn.functional.normalize(torch.randn(1, 3, 32, 32), dim=1)
    priors.adapted.normal_sds(normal, torch.ones(1, 1, 32, 32), priors.adapted.normal.embed("a person"), (0.2, 0.8),
                              7.5, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MissingWeightError, match="depth-adapted"):
        priors.adapted.depth
    with pytest.raises(MissingWeightError, match="prior_3d|geneman-prior3d"):
        priors.hybrid.prior_3d


def test_sapiens_estimates_masked_maps(weights):
    normal = SapiensEstimator.from_pretrained(weights, "normal", "cpu")
    depth = SapiensEstimator.from_pretrained(weights, "depth", "cpu")
    image, mask = torch.rand(1, 3, 64, 48), torch.zeros(1, 1, 64, 48)
    mask[..., 10:50, 10:40] = 1
    n, d = normal(image, mask), depth(image, mask)
    assert n.shape == (1, 3, 64, 48) and d.shape == (1, 1, 64, 48)
    torch.testing.assert_close(n[0, :, 20, 20].norm(), torch.tensor(1.0))
    assert n[..., 0, 0].abs().sum() == 0 and d[..., 0, 0] == 0
    assert d[mask > 0].max() == 1.0 and d[mask > 0].min() == 0.0


def test_missing_sapiens_stops_unless_the_preset_allows_it(tmp_path, caplog):
    cfg = Config(weights_dir=str(tmp_path))
    with pytest.raises(MissingWeightError, match="sapiens"):
        load_estimators(cfg, "cpu")
    cfg.sapiens_optional = True
    with caplog.at_level("WARNING"):
        assert load_estimators(cfg, "cpu") == {"normal": None, "depth": None}
    assert "normal losses disabled" in caplog.text and "depth losses disabled" in caplog.text


def test_pull_fetches_the_chosen_files_into_the_weights_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    listing = ["config.json", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors", "README.md"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, repo_type=None: listing)

    def fake_download(repo, repo_type=None, local_dir=None, allow_patterns=None):
        calls.append((repo, local_dir, allow_patterns))
        if repo.startswith("facebook"):
            raise OSError("no network")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    cfg = Config(weights_dir=str(tmp_path))
    report = pull(cfg, ["texture_refine", "preprocess"])
    control = [c for c in calls if c[0] == cfg.controlnet_normal][0]
    assert control[1] == str(tmp_path / cfg.controlnet_normal)
    assert control[2] == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert report[2] == f"controlnet_normal: downloaded to {tmp_path / cfg.controlnet_normal}"
    assert not any(line.startswith("lpips") for line in report)  # optional in stage 4: not pulled for it
    assert report[3].startswith("sapiens_normal: download failed (OSError: no network)")


OLD_SD15, NEW_SD15 = "runwayml/stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_sd15_defaults_to_its_current_hub_id():
    from pipeline.config import load_config

    assert Config().sd15 == NEW_SD15
    assert {load_config(p, None, []).priors.sd15 for p in ("paper", "release", "cpu")} == {NEW_SD15}


def test_a_copy_under_the_old_sd15_id_is_found_and_loaded(tmp_path):
    cfg = tiny.write_weights(tmp_path)
    (tmp_path / "runwayml").mkdir()
    (tmp_path / NEW_SD15).rename(tmp_path / OLD_SD15)
    row = check(cfg, ["geometry_init"])[0]
    assert row.spec.key == "sd15" and row.spec.repo_id == NEW_SD15
    assert row.found and row.alias == OLD_SD15 and row.folder == str(tmp_path / OLD_SD15)
    assert f"found under the old id {OLD_SD15} (now {NEW_SD15})" in format_report(check(cfg, ["geometry_init"]))
    assert resolve(cfg, row.spec) == tmp_path / OLD_SD15
    prior = StableDiffusionSDS.from_pretrained(cfg, "cpu")
    assert prior.vae.config.scaling_factor > 0
    expected = f"sd15: already present in {tmp_path / OLD_SD15} (under the old id {OLD_SD15})"
    assert pull(cfg, ["geometry_init"])[0] == expected
    # a config that still names the old id looks under the current id first
    same = check(dataclasses.replace(cfg, sd15=OLD_SD15), ["geometry_init"])[0]
    assert same.spec.repo_id == NEW_SD15 and same.alias == OLD_SD15


def test_a_copy_under_the_current_id_wins_and_has_no_alias(weights):
    row = check(weights, ["geometry_init"])[0]
    assert row.found and row.alias is None and row.folder.endswith(NEW_SD15)
    assert "old id" not in format_report([row])


def test_no_sd15_copy_names_the_current_id(tmp_path):
    (tmp_path / OLD_SD15 / "vae").mkdir(parents=True)  # an incomplete old copy is not used
    cfg = Config(weights_dir=str(tmp_path))
    row = check(cfg, ["geometry_init"])[0]
    assert not row.found and row.alias is None and row.folder == str(tmp_path / NEW_SD15)
    with pytest.raises(MissingWeightError, match=f"id '{NEW_SD15}'") as err:
        resolve(cfg, row.spec)
    assert OLD_SD15 not in str(err.value)


def _cache_file(cache, repo_id, rel, commit="0" * 40):
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    path = repo / "snapshots" / commit / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return repo / "snapshots" / commit


def test_a_hub_cache_copy_under_the_old_sd15_id_is_found(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    cfg = Config()
    spec = required_weights(cfg, ["geometry_init"])[0]
    assert not check(cfg, ["geometry_init"])[0].found
    for alts in spec.files:
        snapshot = _cache_file(tmp_path, OLD_SD15, alts[0])
    row = check(cfg, ["geometry_init"])[0]
    assert row.found and row.alias == OLD_SD15 and row.folder == str(snapshot)
    assert resolve(cfg, spec) == snapshot
