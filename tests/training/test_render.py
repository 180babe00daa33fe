"""``geneman data render``: the 2D and 3D layouts the trainers read, reproducible from the seed, the crop
augmentation, the relative cameras, and one-line errors that leave no half-made folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from evaluation.framing import frame_subject
from evaluation.truth import render_truth
from pipeline.cli.main import main
from priors.prior_3d import relative_camera
from stages.render.cameras import reference_camera
from training import render, synth
from training.datasets import CaptionedImages, ViewPairs

CFG = render.RenderConfig(size=32, views_2d=6, views_3d=3, crop_ratios=(0.34, 0.33, 0.33), seed=5)


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("people")
    synth.synth(2, folder, seed=3, voxel=0.02)
    return folder


@pytest.fixture(scope="module")
def data(meshes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "d"
    render.render_dataset(meshes, out, CFG)
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_counts_and_manifest(data, meshes):
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["counts"] == {"subjects": 2, "images_2d": 12, "views_3d": 6, "pairs_3d": 12}
    assert manifest["seed"] == 5 and manifest["size"] == 32
    assert [s["name"] for s in manifest["subjects"]] == ["person_0000", "person_0001"]
    rows = [json.loads(line) for line in (data / "2d" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["crop"] for r in rows} <= set(render.CROPS)
    for r in rows:
        with Image.open(data / "2d" / r["file_name"]) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
        assert render.CROP_WORDS[r["crop"]] in r["text"]
        assert r["text"].endswith(f"{render.side_word(r['azimuth'])} view")
    people = json.loads((meshes / "manifest.json").read_text())["people"]
    assert rows[0]["text"].startswith(render.person_caption(people[0]["spec"]))
    cams = json.loads((data / "3d" / "views" / "person_0001" / "cameras.json").read_text())
    assert [c["file"] for c in cams] == ["00.png", "01.png", "02.png"]
    assert (cams[0]["elevation"], cams[0]["azimuth"], cams[0]["distance"]) == (0.0, 0.0, 3.0)
    lo, hi = render.RenderConfig().elevation_range
    assert all(lo <= c["elevation"] <= hi for c in cams)
    assert not list(data.parent.glob(".*partial*"))


def test_view_00_is_the_photo_framing_and_pairs_carry_the_relative_camera(data, meshes):
    # view 00 is what preprocess would make of a photo of the mesh: the framed reference render
    mesh = meshes / "person_0000.glb"
    truth = render_truth(mesh, reference_camera(), 32, 32, frame_subject(mesh, canvas=32))["rgb"][0]
    view = torch.from_numpy(np.asarray(Image.open(data / "3d" / "views" / "person_0000" / "00.png"), np.float32) / 255)
    assert (view - truth).abs().max() < 1 / 255 + 1e-6
    cams = {c["file"]: c for c in json.loads((data / "3d" / "views" / "person_0000" / "cameras.json").read_text())}
    rows = [json.loads(line) for line in (data / "3d" / "pairs.jsonl").read_text().splitlines()]
    assert len({(r["source"], r["target"]) for r in rows}) == 12 and all(r["source"] != r["target"] for r in rows)
    row = next(r for r in rows if r["source"].endswith("person_0000/01.png") and r["target"].endswith("/00.png"))
    a, b = cams["01.png"], cams["00.png"]
    want = relative_camera(torch.tensor([b["elevation"]]), torch.tensor([b["azimuth"]]), torch.tensor([3.0]),
                           (a["elevation"], a["azimuth"], 3.0)).flatten()
    assert torch.allclose(torch.tensor(row["camera"]), want, atol=1e-6)
    pairs = ViewPairs(data, 32)
    assert len(pairs) == 12 and pairs.batch(torch.tensor([0, 5]))[2].shape == (2, 1, 4)
    images = CaptionedImages(data, 32)
    assert len(images) == 12 and images.batch(torch.tensor([3]))[0].shape == (1, 3, 32, 32)


def test_crops_zoom_in_on_the_top_of_the_silhouette(data):
    """A close-up shows the top of the person larger: its silhouette covers more of the image than the
    full view's top quarter does (same mesh, cameras from the same seed)."""
    rows = [json.loads(line) for line in (data / "2d" / "metadata.jsonl").read_text().splitlines()]
    cover = {}
    for r in rows:
        rgb = np.asarray(Image.open(data / "2d" / r["file_name"]), np.float32) / 255
        cover.setdefault(r["crop"], []).append(float((rgb.min(-1) < 0.97).mean()))
    assert set(cover) == set(render.CROPS), "the seed should draw every crop"
    assert np.mean(cover["closeup"]) > np.mean(cover["full"]) and np.mean(cover["upper"]) > np.mean(cover["full"])


def test_same_seed_same_bytes_other_seed_other_cameras(meshes, data, tmp_path):
    render.render_dataset(meshes, tmp_path / "again", CFG)
    manifest = (tmp_path / "again" / "manifest.json").read_bytes()
    assert _tree(tmp_path / "again") == _tree(data) | {"manifest.json": manifest}
    first = json.loads((data / "manifest.json").read_text())
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert first == again
    render.render_dataset(meshes, tmp_path / "other", render.RenderConfig(**{**CFG.__dict__, "seed": 6}))
    assert (tmp_path / "other" / "3d" / "pairs.jsonl").read_bytes() != (data / "3d" / "pairs.jsonl").read_bytes()


def test_a_users_textured_obj_renders_with_the_plain_caption(tmp_path):
    box = trimesh.creation.box((0.4, 1.6, 0.3))
    box.apply_translation((0, 0.8, 0))
    texture = Image.fromarray(np.tile(np.array([[200, 40, 40], [40, 40, 200]], np.uint8)[:, None], (1, 8, 1)))
    box.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(0).random((len(box.vertices), 2)),
                                               image=texture)
    (tmp_path / "scans").mkdir()
    box.export(tmp_path / "scans" / "scan.obj")
    render.render_dataset(tmp_path / "scans", tmp_path / "d", render.RenderConfig(size=16, views_2d=2, views_3d=2))
    rows = [json.loads(line) for line in (tmp_path / "d" / "2d" / "metadata.jsonl").read_text().splitlines()]
    assert rows[0]["text"].startswith("a photo of a person, ") and rows[0]["subject"] == "scan"


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(["data", "render", *map(str, argv), "--quiet"])
    return code, capsys.readouterr().err.strip()


def test_bad_data_one_line_errors_nothing_left(tmp_path, capsys, meshes):
    (tmp_path / "empty").mkdir()
    code, err = _cli(capsys, tmp_path / "empty", "-o", tmp_path / "d1")
    assert code == 2 and "no mesh files" in err and str(tmp_path / "empty") in err and "\n" not in err
    code, err = _cli(capsys, tmp_path / "missing", "-o", tmp_path / "d1")
    assert code == 2 and "no such folder" in err

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in meshes.glob("*.glb"):
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "person_0002.glb").write_bytes(b"glTF not really")
    code, err = _cli(capsys, bad, "-o", tmp_path / "d2")
    assert code == 2 and "person_0002.glb" in err and "cannot read" in err and "\n" not in err
    assert not (tmp_path / "d2").exists() and not list(tmp_path.glob(".d2*"))

    plain = tmp_path / "plain"
    plain.mkdir()
    trimesh.creation.box().export(plain / "grey.ply")
    code, err = _cli(capsys, plain, "-o", tmp_path / "d3")
    assert code == 2 and "grey.ply" in err and "no colour" in err
    assert not (tmp_path / "d3").exists()

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    code, err = _cli(capsys, meshes, "-o", tmp_path / "taken")
    assert code == 2 and "not an empty folder" in err and (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    code, err = _cli(capsys, meshes, "-o", tmp_path / "d4", "--views-3d", "1")
    assert code == 2 and "no pairs" in err


def test_cli_renders_and_reports_counts(meshes, tmp_path, capsys):
    code = main(["data", "render", str(meshes), "-o", str(tmp_path / "d"), "--size", "16", "--views-2d", "1",
                 "--views-3d", "2", "--quiet"])
    assert code == 0
    assert "2 captioned images and 4 view pairs of 2 meshes" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["demo", "cpu", "paper"])
def test_the_training_cameras_cover_every_elevation_the_stages_guide_from(preset):
    """The priors are trained at every elevation a stage's guidance views are drawn at (the presets'
    ``camera.elevation_range``; SDS asked up to 45 degrees of priors whose data stopped at 30)."""
    from pipeline.config import load_config

    cfg = load_config(preset)
    lo, hi = render.RenderConfig().elevation_range
    asked = [getattr(cfg, stage).camera.elevation_range for stage in
             ("geometry_init", "geometry_sculpt", "texture_coarse", "texture_refine")
             if hasattr(getattr(cfg, stage), "camera")]
    assert len(asked) >= 3
    assert all(lo <= a <= b <= hi for a, b in asked), (asked, (lo, hi))
