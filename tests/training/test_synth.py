"""Procedural people: seeded and reproducible, varied, closed and connected, front unlike back; the
``geneman data synth`` command; the benchmark's five subjects unchanged by the shared code."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from evaluation.subjects import SUBJECTS, make_subject, nearest_part
from pipeline.cli.main import main
from training import synth
from training.synth import build_person, person, person_parts, sample_person

VOXEL = 0.02
"""Coarse grid for speed: the thinnest parts (0.02 m radius) stay whole."""
SPECS = [person(0, i) for i in range(30)]


def _covering(specs) -> list[int]:
    """Indices of a few of ``specs`` that together show every outfit, hair style, held object, a half
    body and a child."""
    wanted = ({("outfit", v) for v in synth.OUTFITS} | {("hair", v) for v in synth.HAIRS}
              | {("held", v) for v in synth.HELD} | {("half_body", True), ("child", True)})
    chosen = []
    for i, spec in enumerate(specs):
        traits = {(k, getattr(spec, k)) for k in ("outfit", "hair", "held", "half_body")} | {
            ("child", spec.height < 1.3)}
        if traits & wanted:
            chosen.append(i)
            wanted -= traits
    assert not wanted, wanted
    return chosen


@pytest.fixture(scope="module")
def people():
    """``{index: (spec, mesh)}`` of the covering people of seed 0, at :data:`VOXEL`."""
    return {i: (SPECS[i], build_person(SPECS[i], VOXEL)) for i in _covering(SPECS)}


def test_same_seed_same_specs_and_bytes_other_seeds_differ():
    assert [person(0, i) for i in range(30)] == SPECS
    assert sample_person(np.random.default_rng([0, 4])) == SPECS[4]
    assert [person(1, i) for i in range(30)] != SPECS and SPECS[0] != SPECS[1]
    glb = [build_person(SPECS[4], VOXEL).export(file_type="glb") for _ in range(2)]
    assert glb[0] == glb[1]
    json.dumps(asdict(SPECS[4]))  # a spec is plain JSON


def test_variety_over_30_people():
    for field, values in (("outfit", synth.OUTFITS), ("sleeves", synth.SLEEVES), ("hair", synth.HAIRS),
                          ("held", synth.HELD), ("half_body", (False, True)), ("chest_print", synth.PRINTS)):
        assert {getattr(s, field) for s in SPECS} == set(values), field
    assert {s.top.kind for s in SPECS} | {s.bottom.kind for s in SPECS} == set(synth.PATTERNS)
    heights = [s.height for s in SPECS]
    assert min(heights) < 1.2 and max(heights) > 1.75 and all(1.0 <= h <= 1.9 for h in heights)
    assert all(s.head > 1.2 for s in SPECS if s.height < 1.2) and all(s.head == 1 for s in SPECS if s.height > 1.6)
    assert len({s.skin for s in SPECS}) > 25 and len({s.top.colour for s in SPECS}) > 25
    assert len({s.right_arm for s in SPECS}) == 30 and np.ptp([s.turn for s in SPECS]) > 15


def test_closed_connected_sized_never_white(people):
    """Every mesh is closed, outward and one piece (a held ball or bag touches its hand); full bodies stand on
    y = 0 and are as tall as their spec; half bodies are cut at the hips."""
    for i, (spec, mesh) in people.items():
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0, i
        assert len(mesh.split(only_watertight=False)) == 1, i
        lo, hi = mesh.bounds
        assert spec.height - 0.03 < hi[1] < spec.height + 0.12, (i, hi[1], spec.height)  # + a bun
        if spec.half_body:
            assert abs(lo[1] - spec.clip_y) < VOXEL, i
        else:
            assert abs(lo[1]) < VOXEL, i
        assert abs(mesh.vertices[:, 0].mean()) < 0.15, i  # centred on the Y axis
        assert mesh.visual.vertex_colors[:, :3].max() <= 0.95 * 255 + 0.5, i


def test_front_and_back_of_the_torso_differ(people):
    """Mean albedo of the top's vertices at belly height (below the chest print, long hair and the cut),
    front (z > 0) against back."""
    for i, (spec, mesh) in people.items():
        v, s = mesh.vertices, spec.scale
        parts = person_parts(spec)
        top = np.array([parts[k].material == "top" for k in nearest_part(parts, v)])
        band = top & (v[:, 1] > 1.0 * s) & (v[:, 1] < 1.15 * s) & (np.abs(v[:, 0]) < 0.12 * s)
        rgb = mesh.visual.vertex_colors[:, :3] / 255.0
        front, back = rgb[band & (v[:, 2] > 0)].mean(0), rgb[band & (v[:, 2] < 0)].mean(0)
        assert np.linalg.norm(front - back) > 0.1, (i, front, back)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", "data", "synth", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_people_and_manifest_and_person_i_is_independent_of_n(tmp_path):
    done = _cli("-n", "2", "-o", str(tmp_path / "cli"), "--seed", "5", "--voxel", str(VOXEL))
    assert done.returncode == 0, done.stderr
    assert "synth person 1/2" in done.stderr and "synth person 2/2" in done.stderr
    files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert files == ["manifest.json", "person_0000.glb", "person_0001.glb"]
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert (manifest["seed"], manifest["n"], manifest["version"], manifest["voxel"]) == (5, 2, synth.VERSION, VOXEL)
    for i, entry in enumerate(manifest["people"]):
        assert entry["spec"] == json.loads(json.dumps(asdict(person(5, i))))
        data = (tmp_path / "cli" / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["faces"] > 1000
    more = synth.synth(3, tmp_path / "lib", 5, VOXEL)  # another process, one more person: the same two first
    assert json.loads(more.read_text())["people"][:2] == manifest["people"]
    for name in files[1:]:
        assert (tmp_path / "lib" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    assert not [p for p in (tmp_path / "lib").iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("args,message", [
    (["-n", "0"], "at least 1"),
    (["-n", "1", "--voxel", "0.5"], "voxel 0.5 m is out of range"),
    (["-n", "1", "--seed", "-1"], "seed -1 is out of range"),
    (["-n", "1", "-o", "FILE"], "is a file"),
])
def test_cli_rejects_bad_input_with_one_line(tmp_path, args, message):
    (tmp_path / "file").write_text("x")
    args = [str(tmp_path / "file") if a == "FILE" else a for a in args]
    done = _cli(*(args if "-o" in args else [*args, "-o", str(tmp_path / "out")]))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("geneman: error: ") and message in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_help_states_the_voxel_default_and_range(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{synth.VOXEL_RANGE[0]} to {synth.VOXEL_RANGE[1]} (default: {synth.VOXEL})" in text


BEFORE = {
    "skirt": "ea43aba0b8e8a9bdfa14b694b90b5ddc5eaf1f3894358b8f9d29a6bf9f5fc500",
    "held_object": "549817a2eead9997bca33cbed9a96c040149db76bc936866a9eb0fc55bce3dff",
    "half_body": "cb7e786277412581f8b26ba428386a4f27514800fb9d72de602ac8099fcb7015",
    "thin_limbs": "4d452285b12eddab5af9e4bc94096e687bbf0c14917ff39949df810b16fc8367",
    "front_back": "0e1f6e6192ae6bb11305275beb85b73313200698f4d802bff301595484bb9459",
}
"""sha256 of each built-in subject (vertices rounded to 1e-7 m, faces, vertex colours), computed with
evaluation/subjects.py as it was before training.synth came to share its part builders and mesh steps
(numpy 2.4.6, scikit-image 0.26.0, trimesh 5.2.0); the rounding keeps the figures from hanging on the
last bit of a platform's floating point."""


def test_the_benchmark_subjects_are_unchanged():
    for name in SUBJECTS:
        mesh = make_subject(name)
        h = hashlib.sha256(np.round(np.asarray(mesh.vertices, np.float64), 7).tobytes())
        h.update(np.asarray(mesh.faces, np.int64).tobytes())
        h.update(np.asarray(mesh.visual.vertex_colors, np.uint8).tobytes())
        assert h.hexdigest() == BEFORE[name], name
