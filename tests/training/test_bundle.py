"""The bundled tiny priors (``priors/bundled``, ``make priors``) and the ``demo`` preset that uses them."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from pipeline.cli.main import main
from pipeline.config import load_config
from priors.registry import PriorSet
from priors.weights import BUNDLED, BUNDLED_DIR, STAGES, check, inside_bundle
from training import bundle

DEMO_STAGES = list(STAGES)  # preprocess too: the bundle's estimators stand in for Sapiens


def test_the_bundle_holds_every_weight_the_demo_preset_loads():
    cfg = load_config("demo")
    assert cfg.priors.weights_dir == BUNDLED and not cfg.priors.sapiens_optional
    rows = check(cfg.priors, DEMO_STAGES, run_cfg=cfg)
    assert [r.spec.key for r in rows if not r.found] == [] and len(rows) == 9
    assert all(Path(r.folder).is_relative_to(BUNDLED_DIR) for r in rows)


def test_the_bundle_is_what_its_record_says_half_precision_and_small():
    record = json.loads((BUNDLED_DIR / "BUNDLE.json").read_text())
    files = sorted(p for p in BUNDLED_DIR.rglob("*") if p.is_file() and p.name != "BUNDLE.json")
    assert {str(p.relative_to(BUNDLED_DIR)) for p in files} == set(record["files"])
    for p in files:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == record["files"][str(p.relative_to(BUNDLED_DIR))], p
    assert sum(p.stat().st_size for p in files) < 30 * 2 ** 20
    for p in (p for p in files if p.suffix == ".safetensors"):
        with safe_open(str(p), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} <= {"F16", "I64"}, p
    # made by this code: the commands recorded are those training/bundle.py runs, from the same seeds
    work = Path(record["steps"][0]["command"][6]).parent
    assert [s["command"][1:] for s in record["steps"]] == [c for _, c in bundle.commands(work)]
    assert record["train_seed"] == bundle.TRAIN_SEED and record["render_seed"] == bundle.RENDER_SEED
    for step in (s for s in record["steps"] if s["name"] not in bundle.DATA_STEPS):
        if step["name"] != "controlnet":  # starts as the 2D prior itself (zero residuals): see docs/BENCHMARKS.md
            assert step["loss_last_20"] < step["loss_first_20"], step["name"]


def test_a_resumed_run_keeps_only_in_bundle_weight_locations(tmp_path):
    stored = tmp_path / "config.yaml"
    stored.write_text(yaml.safe_dump({"priors": {"weights_dir": BUNDLED, "sd15": "tiny/sd",
                                                 "normal_adapted": "/elsewhere/model", "depth_adapted": "../up"}}))
    cfg = load_config(None, stored, run_folder_config=True)
    assert (cfg.priors.weights_dir, cfg.priors.sd15) == (BUNDLED, "tiny/sd")
    default = load_config(None).priors
    assert (cfg.priors.normal_adapted, cfg.priors.depth_adapted) == (default.normal_adapted, default.depth_adapted)
    assert not inside_bundle("~/x") and inside_bundle("tiny/geneman/prior3d")
    stored.write_text(yaml.safe_dump({"priors": {"weights_dir": "/mine", "sd15": "tiny/sd"}}))
    cfg = load_config(None, stored, run_folder_config=True)
    assert (cfg.priors.weights_dir, cfg.priors.sd15) == (default.weights_dir, default.sd15)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory, monkeypatch_module) -> Path:
    """``make priors`` at toy scale: 2 people, 2 steps a model (the code path of the real bundle)."""
    root = tmp_path_factory.mktemp("bundle")
    monkeypatch_module.setattr(bundle, "TRAIN_PEOPLE", 2)
    monkeypatch_module.setattr(bundle, "VIEWS_2D", 3)
    monkeypatch_module.setattr(bundle, "VIEWS_3D", 2)
    monkeypatch_module.setattr(bundle, "MAPS_VIEWS", 3)
    monkeypatch_module.setattr(bundle, "TRAIN", tuple((n, k, s, 2, lr, e) for n, k, s, _, lr, e in bundle.TRAIN))
    assert bundle.main(["--work", str(root / "work"), "--out", str(root / "bundled")]) == 0
    return root / "bundled"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_make_priors_writes_the_layout_the_demo_preset_reads(small_bundle):
    cfg = load_config("demo", sets=[f"priors.weights_dir={small_bundle}"])
    assert all(r.found for r in check(cfg.priors, DEMO_STAGES, run_cfg=cfg))
    priors = PriorSet(cfg.priors, "cpu")
    priors.check(DEMO_STAGES, cfg)
    assert priors.prior_3d.native_size == bundle.SIZE and priors.prior_2d.unet.dtype.is_floating_point


def test_the_demo_preset_makes_an_avatar_from_the_example_photo(small_bundle, tmp_path):
    """`make demo`'s command, at a few steps a stage, with the toy bundle: photo -> final/."""
    out = tmp_path / "demo"
    short = ["geometry_init.steps=4", "geometry_init.resolution_milestones=[2]", "geometry_sculpt.steps=3",
             "geometry_sculpt.init_steps=3", "texture_coarse.steps=3", "texture_refine.steps=3",
             "texture_refine.edit_every=2"]
    sets = [a for s in [f"priors.weights_dir={small_bundle}", *short] for a in ("--set", s)]
    photo = Path(__file__).resolve().parents[2] / "examples" / "demo_person.png"
    assert main(["run", str(photo), "-o", str(out), "--preset", "demo", *sets, "--quiet"]) == 0
    assert {"avatar.glb", "turntable.mp4", "preview.png"} <= {p.name for p in (out / "final").iterdir()}
    with safe_open(str(out / "00_preprocess" / "result" / "inputs.safetensors"), "pt") as f:
        assert {"depth", "normal"} <= set(f.keys())  # the bundle's estimators ran in preprocess
