"""``geneman bench``: the figures are right on a known answer, the report and the reconstruction land
in the subject's frame, bad subjects get one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch
import trimesh

from evaluation.framing import frame_subject
from evaluation.meshes import load_mesh
from evaluation.silhouettes import truth_masks
from evaluation.subjects import write_subject
from evaluation.truth import SubjectRenderer
from pipeline.bench import Silhouettes, appearance_report, stage_report, subject_file
from pipeline.run.runner import DEFAULT_STAGES
from stages import geometry_init
from stages.render.cameras import reference_camera
from stages.render.uv import fallback_uv
from stages.textured_mesh import TexturedMesh
from tests.stages.geometry_helpers import TINY
from tests.stages.render.helpers import icosphere


def test_a_reconstruction_equal_to_its_subject_scores_perfectly(tmp_path):
    path = write_subject("half_body", tmp_path / "s.glb")
    subject = load_mesh(path)
    framing = frame_subject(subject, 64)
    verts = torch.as_tensor(framing.to_scene(subject.vertices), dtype=torch.float32)
    folder = tmp_path / "run" / "01_geometry_init" / "result"
    folder.mkdir(parents=True)
    geometry_init.Result(verts, torch.as_tensor(subject.faces)).save(folder)
    renderer = SubjectRenderer(subject, framing)
    photo = renderer(reference_camera(), 64, 64)["mask"][0, ..., 0]
    sil = Silhouettes(truth_masks(renderer, 8, 64), photo, reference_camera())
    figures = stage_report(tmp_path / "run", DEFAULT_STAGES[0], subject, framing, 1.0, sil)
    assert figures["fscore"] == 1.0 and figures["normal_consistency"] > 0.995  # nearest-sample normals: sampling noise
    assert figures["fscore_5"] == 1.0 and figures["chamfer_l1"] < 0.003  # sampling noise only, subject units (m)
    assert figures["iou"] == figures["iou_back"] == figures["iou_min"] == figures["iou_ref"] == 1.0
    shifted = subject.vertices + np.array([0.05, 0, 0])  # 5 cm, far beyond tau (1 % of the diagonal)
    geometry_init.Result(torch.as_tensor(framing.to_scene(shifted), dtype=torch.float32),
                         torch.as_tensor(subject.faces)).save(folder)
    moved = stage_report(tmp_path / "run", DEFAULT_STAGES[0], subject, framing, 1.0, sil)
    assert moved["fscore"] < 0.3 and moved["fscore_5"] > 0.9  # 5 cm is within 5% of the 1.8 m diagonal
    assert moved["iou_min"] < moved["iou"] < 0.95 and moved["iou_ref"] < 0.95


def test_a_generated_person_is_a_subject_and_a_bad_spec_is_one_line(tmp_path):
    from training.synth import build_person, person

    path = subject_file("synth:300:2", tmp_path / "b")
    assert path == tmp_path / "b" / "subject.glb"
    assert path.read_bytes() == build_person(person(300, 2)).export(file_type="glb")
    for bad in ("synth:300", "synth:a:1", "synth:1:2:3"):
        r = bench("--subject", bad, "-o", str(tmp_path / bad.replace(":", "_")))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "synth:SEED:INDEX" in r.stderr, r.stderr
        assert not (tmp_path / bad.replace(":", "_")).exists()


def test_appearance_known_answers():
    """A textured avatar rendered against itself scores inf on every view; the same with its texture
    0.1 brighter everywhere it is seen scores 20 dB (MSE 0.01) on every view, front and back."""
    verts, faces = icosphere(2, 0.4)
    atlas = fallback_uv(verts, faces)
    texture = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) * 0.8
    same = TexturedMesh.from_split(atlas.verts, atlas.faces, atlas.uvs, texture)
    renderer = lambda cams, h, w: same.render(cams, h, w)  # noqa: E731 - the truth: the avatar itself
    report = appearance_report(same, renderer, 32, n_views=8)
    assert report["psnr"] == float("inf") and report["psnr_back"] == float("inf")
    brighter = TexturedMesh.from_split(atlas.verts, atlas.faces, atlas.uvs, texture + 0.1)
    report = appearance_report(brighter, renderer, 32, n_views=8)
    assert len(report["per_view"]["psnr"]) == 8
    # background pixels are equal: 20 dB over the covered pixels is more over the whole view
    assert all(p > 20.0 for p in report["per_view"]["psnr"]) and report["psnr_front"] < 40
    assert report["ssim"] < 1.0


def bench(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", "bench", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_bench_runs_the_built_stages_and_reports_in_the_subject_frame(tmp_path):
    sets = [f"{stage}.{s}" for stage, items in TINY.items() for s in items] + [
        "preprocess.canvas=64", "preprocess.landmarks=false", "geometry_init.steps=6", "geometry_sculpt.steps=4",
        "texture_coarse.steps=4", "texture_refine.steps=4", "texture_refine.n_views=2",
        "export.turntable_resolution=32", "export.preview_resolution=32"]
    r = bench("--subject", "thin_limbs", "-o", str(tmp_path / "b"), "--quiet", *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(report["stages"]) == {"geometry_init", "geometry_sculpt", "texture_coarse", "texture_refine"}
    for figures in report["stages"].values():
        assert {"chamfer_l1", "normal_consistency", "fscore", "seconds"} <= set(figures)
    assert report["fscore"] == report["stages"]["geometry_sculpt"]["fscore"] and report["wall_s"] > 0
    assert report["views"] == 120 and len(report["per_view"]["psnr"]) == 120
    for key in ("psnr", "ssim", "psnr_front", "psnr_back"):
        assert np.isfinite(report[key]), key
    assert 0 < report["ssim"] <= 1 and min(report["psnr_front"], report["psnr_back"]) <= report["psnr"]
    recon = trimesh.load(tmp_path / "b" / "recon.glb", force="mesh")
    assert isinstance(recon.visual, trimesh.visual.TextureVisuals)  # textured once the texture stages ran
    subject = trimesh.load(tmp_path / "b" / "subject.glb", force="mesh")
    # in the subject's own frame and units: the two boxes overlap and have the same scale
    assert np.abs(recon.bounds.mean(0) - subject.bounds.mean(0)).max() < 0.3
    assert 0.5 < recon.extents.max() / subject.extents.max() < 2.0
    assert "fscore=" in r.stdout and (tmp_path / "b" / "run" / "run.json").is_file()
    check_bench_page(tmp_path / "b", report)
    # --from-stage in the same folder: stage 4 redone with another setting; the stages before it are kept
    # byte for byte, with their figures
    run = tmp_path / "b" / "run"
    kept = {p: p.read_bytes() for p in sorted(run.glob("0[123]_*/result/*.safetensors"))}
    textured = (run / "04_texture_refine" / "result" / "textured.safetensors").read_bytes()
    before = json.loads((run / "run.json").read_text())["stages"]
    r = bench("--subject", "thin_limbs", "-o", str(tmp_path / "b"), "--quiet", "--from-stage", "texture_refine",
              *[a for s in sets for a in ("--set", s)], "--set", "texture_refine.steps=2")
    assert r.returncode == 0, r.stderr
    assert len(kept) >= 3 and all(p.read_bytes() == b for p, b in kept.items())
    assert (run / "04_texture_refine" / "result" / "textured.safetensors").read_bytes() != textured
    assert "steps: 2" in (run / "config.yaml").read_text().split("texture_refine:")[1]
    again = json.loads((tmp_path / "b" / "bench.json").read_text())
    after = json.loads((run / "run.json").read_text())["stages"]
    for name in ("geometry_init", "geometry_sculpt", "texture_coarse"):
        assert again["stages"][name] == report["stages"][name] and after[name] == before[name], name
    redone = after["texture_refine"]
    assert redone["state"] == "done" and redone["started"] > before["texture_refine"]["finished"]
    assert len(again["per_view"]["psnr"]) == 120


def check_bench_page(out, report) -> None:
    """The bench folder's report.html: the subject and the result in the viewer (their own bytes), bench.json's
    figures and its per-view curves; in a real browser both viewers draw, quietly and offline."""
    import base64
    import re

    from tests.browser import CHROMIUM, Browser, assert_quiet, open_checked, viewer_pixels

    html = (out / "report.html").read_text()
    js = (out / "report_files" / "models.js").read_text()
    table = json.loads(js[js.index("=") + 1:].strip().rstrip(";"))
    assert base64.b64decode(table["truth"].split(",", 1)[1]) == (out / "subject.glb").read_bytes()
    assert base64.b64decode(table["recon"].split(",", 1)[1]) == (out / "recon.glb").read_bytes()
    assert f"<td>fscore</td><td>{report['fscore']:.4g}</td>" in html
    curve = re.search(r'data-name="psnr"[^>]*points="([^"]+)"', html).group(1)
    assert len(curve.split()) == 120
    assert 'src="run/00_preprocess/' in html and 'id="stage-texture_refine"' in html
    if CHROMIUM is None and not os.environ.get("GENEMAN_REQUIRE_BROWSER"):
        return  # the browser half needs Chromium (test_report.py's browser tests say so where it is missing)
    with Browser(CHROMIUM) as browser:
        open_checked(browser, out / "report.html")
        assert browser.evaluate("document.querySelectorAll('model-viewer').length") == 2
        drawn, total = viewer_pixels(browser)
        assert drawn > 0.02 * total, (drawn, total)
        assert_quiet(browser)


def test_bad_subject_is_one_line_exit_2(tmp_path):
    r = bench("--subject", str(tmp_path / "nope.glb"), "-o", str(tmp_path / "b"))
    assert r.returncode == 2 and "nope.glb" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "empty.obj").write_text("# nothing\n")
    r = bench("--subject", str(tmp_path / "empty.obj"), "-o", str(tmp_path / "c"))
    assert r.returncode == 2 and "empty.obj" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bench_with_the_presets_own_priors_runs_them_and_scores_silhouettes(tmp_path, tiny_weights):
    """``--guidance priors``: the run gets the preset's priors (tiny weights here) and its own depth/normal source
    (the tiny Sapiens, an untrained TorchScript: trusted for this command), not the true maps the oracle bench
    gives; bench.json says so and has every stage's silhouette IoUs and the final avatar's."""
    weights, prior_3d = tiny_weights
    sets = [f"{stage}.{s}" for stage, items in TINY.items() for s in items] + [
        "preprocess.canvas=64", "preprocess.landmarks=false", "geometry_init.steps=4", "geometry_sculpt.steps=2",
        "texture_coarse.steps=2", "texture_refine.steps=2", "texture_refine.n_views=1", "export.formats=[glb]",
        f"priors.weights_dir={weights}", f"priors.prior_3d_diffusers={prior_3d}"]
    out = tmp_path / "b"
    r = bench("--subject", "half_body", "-o", str(out), "--guidance", "priors", "--trust-weights", "--quiet",
              *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "bench.json").read_text())
    assert report["guidance"] == "priors"
    from pipeline.bench import frame, reference_photo
    from pipeline.config import load_config

    cfg = load_config("cpu", None, sets)
    subject = load_mesh(out / "subject.glb")
    _, truth = reference_photo(SubjectRenderer(subject, frame(subject, out, cfg)), cfg, tmp_path)
    from PIL import Image
    depth = np.asarray(Image.open(out / "run" / "00_preprocess" / "result" / "depth.png").convert("L")) / 255.0
    assert np.abs(depth - truth["depth"]).mean() > 0.05  # the tiny Sapiens' map, not the truth
    for name, figures in report["stages"].items():
        assert {"iou", "iou_back", "iou_min", "iou_ref", "fscore_5"} <= set(figures), name
        assert 0.0 <= figures["iou_min"] <= figures["iou"] <= 1.0 and 0.0 <= figures["iou_ref"] <= 1.0
    assert report["final_iou"] == report["stages"]["texture_refine"]["iou"]
    assert "iou=" in r.stdout and "fscore_5=" in r.stdout
    missing = bench("--subject", "half_body", "-o", str(tmp_path / "none"), "--guidance", "priors", "--quiet",
                    "--set", f"priors.weights_dir={tmp_path / 'empty'}")
    assert missing.returncode == 2 and "missing" in missing.stderr and not (tmp_path / "none").exists()


def test_bench_until_runs_and_scores_the_stages_up_to_it_only(tmp_path):
    sets = [f"{stage}.{s}" for stage, items in TINY.items() for s in items] + [
        "preprocess.canvas=64", "preprocess.landmarks=false", "geometry_init.steps=4"]
    out = tmp_path / "b"
    r = bench("--subject", "thin_limbs", "-o", str(out), "--until", "geometry_init", "--quiet",
              *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "bench.json").read_text())
    assert set(report["stages"]) == {"geometry_init"} and "psnr" not in report
    assert report["fscore"] == report["stages"]["geometry_init"]["fscore"] and "iou_ref" in report
    assert not (out / "run" / "02_geometry_sculpt").exists() and (out / "recon.glb").is_file()
    bad = bench("--subject", "thin_limbs", "-o", str(tmp_path / "c"), "--until", "sculpt", "--quiet")
    assert bad.returncode == 2 and "--until sculpt" in bad.stderr and not (tmp_path / "c").exists()
