"""GLB / OBJ files of stages/render/export.py: the glTF frame, the PBR material, atomic writes, and the
Khronos glTF-Validator on what is written."""
import json
import struct

import numpy as np
import pytest
import torch
import trimesh

from evaluation.framing import GLTF_TO_SCENE
from stages.render import export as E
from stages.render.uv import fallback_uv

from . import gltf_validator
from .helpers import icosphere


def gltf_json(path) -> dict:
    """The JSON chunk of a GLB file."""
    data = path.read_bytes()
    magic, version, _ = struct.unpack("<4sII", data[:12])
    length, kind = struct.unpack("<I4s", data[12:20])
    assert (magic, version, kind) == (b"glTF", 2, b"JSON")
    return json.loads(data[20:20 + length])


@pytest.fixture
def split_sphere():
    """An icosphere split along its fallback atlas' seams, and a seeded 64 x 64 texture."""
    verts, faces = icosphere(2, 0.4)
    m = fallback_uv(verts, faces)
    return m.verts, m.faces, m.uvs, torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0))


def test_scene_to_gltf_is_the_inverse_of_the_benchmarks_framing():
    np.testing.assert_array_equal(E.SCENE_TO_GLTF @ GLTF_TO_SCENE, np.eye(3))
    assert np.linalg.det(E.SCENE_TO_GLTF) == 1.0  # a rotation: winding (outward faces) is kept
    up, towards_reference_camera = E.to_gltf_frame(np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert up.tolist() == [0.0, 1.0, 0.0] and towards_reference_camera.tolist() == [0.0, 0.0, 1.0]


def test_glb_holds_a_pbr_material_the_texture_and_gltf_axes(tmp_path, split_sphere):
    verts, faces, uvs, texture = split_sphere
    path = E.export_glb(tmp_path / "avatar.glb", verts, faces, uvs, texture)
    doc = gltf_json(path)
    assert doc["asset"]["version"] == "2.0" and len(doc["meshes"]) == 1 and len(doc["meshes"][0]["primitives"]) == 1
    pbr = doc["materials"][0]["pbrMetallicRoughness"]
    assert pbr["baseColorFactor"] == [1.0, 1.0, 1.0, 1.0] and "baseColorTexture" in pbr
    assert (pbr["metallicFactor"], pbr["roughnessFactor"]) == (0.0, 1.0)
    assert doc["images"][0]["mimeType"] == "image/png"
    mesh = trimesh.load(path, force="mesh", process=False)  # trimesh's reader, not ours
    back = torch.tensor(E.to_scene_frame(mesh.vertices), dtype=torch.float32)
    torch.testing.assert_close(back[torch.as_tensor(mesh.faces)], verts[faces])
    assert mesh.vertices[:, 1].max() == pytest.approx(float(verts[:, 2].max()))  # scene z up is glTF +y
    pixels = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(pixels, E.to_uint8(texture))  # 8-bit rounding, nothing else
    uv = np.asarray(mesh.visual.uv)
    np.testing.assert_allclose(uv[mesh.faces], uvs[faces].numpy(), atol=1e-6)
    normals = np.asarray(mesh.vertex_normals)
    assert (np.einsum("ij,ij->i", normals, mesh.vertices) > 0).all()  # outward, as the sphere's faces


def test_obj_names_its_mtl_and_texture_with_white_diffuse(tmp_path, split_sphere):
    verts, faces, uvs, texture = split_sphere
    path = E.export_obj(tmp_path / "avatar.obj", verts, faces, uvs, texture)
    obj, mtl = path.read_text(), (tmp_path / "avatar.mtl").read_text()
    assert "mtllib avatar.mtl" in obj and "usemtl avatar" in obj
    assert "Kd 1 1 1" in mtl.splitlines() and "map_Kd avatar_albedo.png" in mtl.splitlines()
    assert obj.count("\nv ") == len(torch.unique(verts, dim=0))  # positions once each: one connected mesh
    mesh = trimesh.load(path, force="mesh", process=False)
    back = torch.tensor(E.to_scene_frame(mesh.vertices), dtype=torch.float32)
    torch.testing.assert_close(back[torch.as_tensor(mesh.faces)], verts[faces])
    np.testing.assert_allclose(np.asarray(mesh.visual.uv)[mesh.faces], uvs[faces].numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mesh.visual.material.image.convert("RGB")), E.to_uint8(texture))


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = E.atomic_write(tmp_path / "a.bin", b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with E.atomic_path(path) as tmp:
            tmp.write_bytes(b"half of the ne")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


@pytest.fixture(scope="module")
def validator():
    """The glTF-Validator's folder (installed on first use; skipped where node, npm or the registry is missing)."""
    return gltf_validator.install()


def _messages(issues: dict) -> str:
    return json.dumps(issues.get("messages", []), indent=1)


def test_the_gltf_validator_finds_no_error(tmp_path, split_sphere, validator):
    path = E.export_glb(tmp_path / "avatar.glb", *split_sphere)
    issues = gltf_validator.validate(validator, path)
    assert issues["numErrors"] == 0, _messages(issues)


def test_the_gltf_validator_catches_a_broken_glb(tmp_path, split_sphere, validator):
    """The check above cannot pass vacuously: the same validator run fails a truncated copy of the file."""
    path = E.export_glb(tmp_path / "avatar.glb", *split_sphere)
    broken = tmp_path / "broken.glb"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    issues = gltf_validator.validate(validator, broken)
    assert issues["numErrors"] > 0, _messages(issues)


def test_to_trimesh_keeps_positions_already_in_the_wanted_frame(split_sphere):
    verts, faces, uvs, texture = split_sphere
    kept, rotated = E.to_trimesh(verts, faces, uvs, texture, rotate=False), E.to_trimesh(verts, faces, uvs, texture)
    np.testing.assert_array_equal(kept.vertices, verts.double().numpy())
    np.testing.assert_array_equal(rotated.vertices, E.to_gltf_frame(verts.numpy()))
