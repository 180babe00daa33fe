"""The HTML report (``OUT/report.html``, a batch's ``OUT/index.html``): each section shows what the run's own
files say, and a real headless Chromium opens the pages offline, draws the avatar in the viewer, logs no
console error and makes no network request."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.report.page import FILES, landmarks, page_weight, photo_section, write_run_report
from stages.inputs import Inputs
from tests.browser import CHROMIUM, Browser, assert_quiet, needs_browser, open_checked, viewer_pixels
from tests.pipeline.batch_helpers import photos
from tests.pipeline.conftest import ROOT, drive, tiny_run_args, write_person


def geneman(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_weights):
    """A real run on tiny weights, previews every step, every export format."""
    tmp = tmp_path_factory.mktemp("report")
    photo = write_person(tmp / "person.png")
    sets = ["geometry_init.preview_every=2", "geometry_sculpt.preview_every=1", "texture_coarse.preview_every=1",
            "texture_refine.preview_every=1", "checkpoint.every_n_steps=1",
            "export.formats=[glb,obj,turntable,preview]"]
    flags = [a for s in sets for a in ("--set", s)]
    r = geneman("run", photo, "-o", tmp / "out", *tiny_run_args(*tiny_weights), *flags)
    assert r.returncode == 0, r.stderr
    return tmp / "out"


def page(root: Path) -> str:
    return (root / "report.html").read_text()


def models(root: Path) -> dict:
    text = (root / FILES / "models.js").read_text()
    return json.loads(text[text.index("=") + 1:].strip().rstrip(";"))


def section(html: str, ident: str) -> str:
    start = html.index(f'id="{ident}"')
    end = html.find('<div class="stage"', start + 1)
    return html[start:end if end > 0 and ident.startswith("stage-") else None]


def test_a_run_writes_its_report_with_every_stage_from_its_own_files(run):
    html, manifest = page(run), json.loads((run / "run.json").read_text())
    assert f'id="status">{manifest["status"]}<' in html
    for name, rec in manifest["stages"].items():
        if name == "preprocess":
            continue
        part = section(html, f"stage-{name}")
        assert f'data-state="{rec["state"]}"' in part and f"{rec['step']}/{rec['total']}" in part
        folder = next(run.glob(f"[0-9][0-9]_{name}"))
        shots = sorted((folder / "previews").glob("step_*.png"))
        assert shots and f'max="{len(shots) - 1}"' in part and f"({len(shots)} previews)" in part
        assert re.search(rf'src="{re.escape(folder.name)}/previews/{shots[-1].name}"', part)
        record = json.loads((folder / "losses.json").read_text())
        assert record["steps"][-1] == rec["total"]
        drawn = set(re.findall(r'class="series" data-name="([^"]+)"', part))
        assert drawn == set(record["losses"]), (drawn, record["losses"].keys())
        assert f"<td>{name}.steps</td><td>{rec['total']}</td>" in part  # differs from the cpu preset's
    assert 'preset cpu' in html


def test_the_avatar_section_holds_the_glb_the_turntable_and_the_files(run):
    glb = (run / "final" / "avatar.glb").read_bytes()
    assert base64.b64decode(models(run)["avatar"].split(",", 1)[1]) == glb
    html = page(run)
    assert 'src="final/turntable.mp4"' in html
    for f in (run / "final").iterdir():
        assert f'href="final/{f.name}" download' in html


def test_the_photo_section_shows_the_maps_and_landmarks_preprocess_kept(tmp_path):
    pre = tmp_path / "00_preprocess" / "result"
    pre.mkdir(parents=True)
    lm = torch.rand(33, 3)
    Inputs(torch.rand(8, 8, 3), torch.ones(8, 8), torch.rand(8, 8), torch.nn.functional.normalize(
        torch.randn(8, 8, 3), dim=-1), lm).save(pre)
    Image.new("RGB", (8, 8)).save(tmp_path / "00_preprocess" / "photo.png")
    html = photo_section(tmp_path, tmp_path, {"input": {"stored_photo": "photo.png"}})
    for caption in ("photo", "recentred crop", "mask", "depth", "normal", "landmarks"):
        assert f'data-map="{caption}"' in html
    assert html.count("<circle") == 33 and len(landmarks(tmp_path)) == 33
    assert f'cx="{float(lm[0, 0]):.4f}"' in html
    (pre / "depth.png").unlink()
    assert 'data-map="depth"' not in photo_section(tmp_path, tmp_path, {"input": {"stored_photo": "photo.png"}})


def test_a_failed_stage_shows_its_error_line_and_its_last_preview(tmp_path):
    photo = write_person(tmp_path / "p.png")
    out = tmp_path / "out"
    r = drive("run", photo, out, env={"GENEMAN_TEST_FAIL": "texture_coarse:3", "GENEMAN_TEST_PREVIEWS": "1"})
    assert r.returncode != 0
    html = page(out)
    part = section(html, "stage-texture_coarse")
    assert 'data-state="failed"' in part
    assert "injected failure at texture_coarse:3" in part and 'class="error"' in part
    assert 'class="last-preview" src="03_texture_coarse/previews/step_00000003.png"' in part
    assert 'data-state="done"' in section(html, "stage-geometry_sculpt")
    assert "No avatar yet" in html


def test_geneman_report_refuses_a_folder_that_is_none_of_its_kinds(tmp_path):
    r = geneman("report", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a run, bench or batch folder" in r.stderr


def test_the_page_weighs_under_5_mb_beside_the_avatar(run):
    assert page_weight(run) < 5 * 2**20


# ---- in a real browser


@needs_browser
def test_the_report_opens_offline_and_draws_the_avatar(run, tmp_path):
    copy = tmp_path / "copied"  # the folder alone, elsewhere: nothing outside it is needed
    shutil.copytree(run, copy)
    with Browser(CHROMIUM) as browser:
        open_checked(browser, copy / "report.html")
        drawn, total = viewer_pixels(browser)
        assert drawn > 0.02 * total, (drawn, total)
        # unlit first: the GLB made in the page has KHR_materials_unlit on every material, its binary chunk as it was
        glb = (run / "final" / "avatar.glb").read_bytes()
        unlit = bytes(browser.evaluate(
            "fetch(document.querySelector('model-viewer').src).then(r => r.arrayBuffer())"
            ".then(b => Array.from(new Uint8Array(b)))"))
        chunk = int.from_bytes(unlit[12:16], "little")
        doc = json.loads(unlit[20:20 + chunk])
        assert doc["materials"] and all("KHR_materials_unlit" in m["extensions"] for m in doc["materials"])
        assert int.from_bytes(unlit[8:12], "little") == len(unlit) and chunk % 4 == 0
        assert unlit[20 + chunk:] == glb[20 + int.from_bytes(glb[12:16], "little"):]
        browser.evaluate("document.getElementById('light').click()")
        browser.wait_for("document.querySelector('model-viewer').src === window.GENEMAN_MODELS.avatar")
        browser.wait_for("document.querySelector('model-viewer').loaded")
        assert viewer_pixels(browser)[0] > 0.02 * total
        n = browser.evaluate("document.querySelectorAll('input[type=range]').length")
        assert n == 4
        browser.evaluate("(() => {const r = document.querySelector('input[type=range]'); r.value = 0;"
                         "r.dispatchEvent(new Event('input'));})()")
        assert browser.evaluate("document.getElementById('preview-geometry_init-label').textContent") == "step 2"
        assert_quiet(browser)


@needs_browser
def test_a_batch_of_three_photos_has_an_index_linking_each_report(tmp_path):
    folder = tmp_path / "photos"
    photos(folder)
    out = tmp_path / "batch"
    r = drive("batch", folder, "-o", out, "--executor", "local", "--quiet")
    assert r.returncode == 0, r.stderr
    html = (out / "index.html").read_text()
    names = sorted(p.stem for p in folder.glob("*.png"))
    assert re.findall(r'data-image="([^"]+)" data-state="done"', html) == names
    for name in names:
        assert f'href="{name}/report.html"' in html and (out / name / "report.html").is_file()
    with Browser(CHROMIUM) as browser:
        browser.open(out / "index.html")
        browser.wait_for("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)", 30)
        assert browser.evaluate("document.querySelectorAll('tr.image').length") == 3
        assert_quiet(browser)
        browser.open(out / names[0] / "report.html")
        browser.wait_for("document.readyState === 'complete'")
        assert_quiet(browser)


def test_geneman_status_refreshes_a_batch_index(tmp_path):
    folder = tmp_path / "photos"
    photos(folder, shades=(100,))
    out = tmp_path / "batch"
    assert drive("batch", folder, "-o", out, "--executor", "local", "--quiet").returncode == 0
    (out / "index.html").unlink()
    r = geneman("status", out)
    assert r.returncode == 0, r.stderr
    assert 'data-image="p0" data-state="done"' in (out / "index.html").read_text()


def test_a_report_written_twice_is_the_same_and_needs_no_run(run, tmp_path):
    before = page(run)
    write_run_report(run)
    assert page(run) == before
