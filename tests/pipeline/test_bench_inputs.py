"""``geneman bench`` checks its subject before any work: coordinates finite and bounded, an extent, face
indices in range, textures bounded by their header (downscaled over 8192 px a side, refused over
16384 x 16384 px) in bounded memory. Each bad subject: one line naming the file, exit 2, no numpy
warning, nothing made in OUT. The meshes are made here, small; a big texture is a one-colour PNG
(a few hundred KB) written row by row."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pipeline.cli.main import main
from tests.pipeline.conftest import ROOT

GREY = 128


def png_bytes(width: int, height: int, grey: int = GREY, data: bytes | None = None) -> bytes:
    """A one-colour 8-bit greyscale PNG, compressed a block of rows at a time (never whole in memory);
    ``data``: this IDAT instead (a damaged image)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    if data is None:
        z, rows = zlib.compressobj(1), 256
        block = (b"\x00" + bytes([grey]) * width) * rows
        parts = [z.compress(block[:min(rows, height - y) * (width + 1)]) for y in range(0, height, rows)]
        data = b"".join(parts) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def textured_glb(path: Path, png: bytes) -> Path:
    """A GLB of one quad facing +Z (1 unit a side) whose base-colour texture is ``png``, written by hand so
    that the image's bytes go in as they are (trimesh's export would decode and re-encode it)."""
    pos = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)
    index = np.array([0, 1, 2, 0, 2, 3], np.uint32)
    binary, views = b"", []
    for blob in (pos.tobytes(), uv.tobytes(), index.tobytes(), png):
        views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(blob)})
        binary += blob + b"\x00" * (-len(blob) % 4)
    gltf = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2, "material": 0}]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
            {"bufferView": 1, "componentType": 5126, "count": 4, "type": "VEC2"},
            {"bufferView": 2, "componentType": 5125, "count": 6, "type": "SCALAR"}],
        "bufferViews": views, "buffers": [{"byteLength": len(binary)}],
        "images": [{"bufferView": 3, "mimeType": "image/png"}], "textures": [{"source": 0}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}],
    }
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    path.write_bytes(struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(text), 0x4E4F534A) + text
                     + struct.pack("<II", len(binary), 0x004E4942) + binary)
    return path


def sphere(vertices=None, faces=None) -> trimesh.Trimesh:
    """A small vertex-coloured icosphere (radius 0.5), its arrays replaced where given."""
    base = trimesh.creation.icosphere(1, 0.5)
    v = base.vertices.copy() if vertices is None else vertices
    colours = np.tile([200, 100, 50, 255], (len(v), 1))
    return trimesh.Trimesh(v, base.faces if faces is None else faces, vertex_colors=colours, process=False)


def _with(i: int, axis: int, value: float) -> np.ndarray:
    v = trimesh.creation.icosphere(1, 0.5).vertices.copy()
    v[i, axis] = value
    return v


def _face_past_the_end(path: Path) -> Path:
    """An ASCII PLY whose first face names vertex 9999 of 42."""
    mesh = sphere()
    lines = trimesh.exchange.ply.export_ply(mesh, encoding="ascii").decode().splitlines()
    first_face = lines.index("end_header") + 1 + len(mesh.vertices)
    lines[first_face] = "3 0 1 9999"
    path.write_text("\n".join(lines) + "\n")
    return path


def _edge_on(path: Path) -> Path:
    """A flat square in the glTF y-z plane: seen edge-on from the reference camera (on +Z)."""
    v = np.array([[0, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]], float)
    mesh = trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], vertex_colors=np.tile([90, 90, 90, 255], (4, 1)),
                           process=False)
    mesh.export(path)
    return path


BAD_GEOMETRY = {
    "nan.glb": (lambda p: sphere(_with(3, 0, np.nan)).export(p), "vertex 3 is (nan, -0.425325, 0)"),
    "inf.obj": (lambda p: sphere(_with(5, 1, np.inf)).export(p), "must be a finite number"),
    "far.ply": (lambda p: sphere(_with(7, 2, 1e30)).export(p), "beyond +-1e+06"),
    "point.glb": (lambda p: sphere(np.zeros((42, 3))).export(p), "all 42 vertices are at one point (0, 0, 0)"),
    "faces.ply": (_face_past_the_end, "face 0 refers to vertex [0, 1, 9999] but the mesh has 42 vertices"),
    "line.ply": (lambda p: sphere(_with(0, 0, 0) * [0, 0, 1]).export(p), "no width or height"),
    "edge_on.glb": (_edge_on, "not visible from the reference camera"),
}


def bench(subject: Path, out: Path) -> int:
    return main(["bench", "--subject", str(subject), "-o", str(out), "--quiet", "--preset", "cpu",
                 "--set", "preprocess.canvas=64"])


def assert_one_line(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("geneman: error: ") and "\n" not in err and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


@pytest.mark.parametrize("name", sorted(BAD_GEOMETRY))
def test_bad_geometry_is_one_line_exit_2_before_any_work(tmp_path, capsys, recwarn, name):
    make, what = BAD_GEOMETRY[name]
    subject = tmp_path / name
    make(subject)
    out = tmp_path / "bench" / "out"
    assert bench(subject, out) == 2
    assert_one_line(capsys, str(subject), what)
    assert not (tmp_path / "bench").exists()
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)], [str(w) for w in recwarn]


def test_an_existing_out_is_left_as_it_was(tmp_path, capsys):
    subject = tmp_path / "nan.glb"
    sphere(_with(0, 0, np.nan)).export(subject)
    (tmp_path / "out").mkdir()
    assert bench(subject, tmp_path / "out") == 2
    assert_one_line(capsys, str(subject))
    assert list((tmp_path / "out").iterdir()) == []


LOAD_AND_MEASURE = """
import resource, sys
from evaluation.meshes import load_mesh
mesh = load_mesh(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(mesh.texture.shape[0], mesh.texture.shape[1], float(mesh.texture.mean()), peak)
"""


@pytest.mark.parametrize("side", [9000, 16000])
def test_a_texture_over_8192_a_side_is_downscaled_in_bounded_memory(tmp_path, side):
    """9000: kept whole before (3.3 GB on the way); 16000: over PIL's bomb limit, dropped (\"no colour\")."""
    subject = textured_glb(tmp_path / "big.glb", png_bytes(side, side))
    assert subject.stat().st_size < 2_000_000
    r = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(subject)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    height, width, mean, peak = r.stdout.split()
    assert int(height) == int(width) == -(-side // 2) and abs(float(mean) - GREY / 255) < 1e-6
    assert int(peak) < 4 * 2**30, f"peak RSS {int(peak) / 2**30:.1f} GB"
    log = r.stderr.strip()
    assert "\n" not in log and str(subject) in log and f"{side} x {side}" in log and "downscaled to" in log, log


def test_a_texture_over_the_pixel_limit_is_refused_from_its_header(tmp_path, capsys):
    """40000 x 40000 px (1.6 G pixels) declared in the header; the data is never decoded (it is not there)."""
    subject = textured_glb(tmp_path / "huge.glb", png_bytes(40000, 40000, data=zlib.compress(b"\x00" * 64)))
    assert bench(subject, tmp_path / "out") == 2
    assert_one_line(capsys, str(subject), "texture is 40000 x 40000 pixels", "at most 8192 px a side")
    assert not (tmp_path / "out").exists()


def test_a_damaged_texture_is_one_line(tmp_path, capsys):
    subject = textured_glb(tmp_path / "damaged.glb", png_bytes(64, 64, data=b"not zlib data at all"))
    assert bench(subject, tmp_path / "out") == 2
    assert_one_line(capsys, str(subject), "texture cannot be decoded")
    assert not (tmp_path / "out").exists()
