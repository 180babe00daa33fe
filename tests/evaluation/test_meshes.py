"""Loading user meshes: round trips of write_subject, textures, scenes, and one-line errors naming the file."""
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from evaluation.meshes import load_mesh
from evaluation.subjects import write_subject
from stages.render.export import export_obj
from stages.render.uv import fallback_uv


@pytest.mark.parametrize("suffix", ["glb", "obj", "ply"])
def test_write_subject_round_trips(tmp_path, subjects, suffix):
    path = write_subject("half_body", tmp_path / f"half_body.{suffix}")
    loaded, mesh = load_mesh(path), subjects["half_body"]
    assert loaded.albedo_kind == "vertex" and loaded.source == path
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
    np.testing.assert_allclose(loaded.colors, mesh.visual.vertex_colors[:, :3] / 255.0, atol=0.5 / 255)


def _textured_quad():
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = verts[:, :2].clone()
    texture = torch.zeros(4, 4, 3)
    texture[:2] = torch.tensor([0.8, 0.2, 0.1])  # top rows (v near 1)
    texture[2:] = torch.tensor([0.1, 0.3, 0.7])
    return verts, faces, uvs, texture


def _pbr_glb(path, verts, faces, uvs, texture, factor=(1.0, 1.0, 1.0, 1.0)):
    image = Image.fromarray((texture.numpy() * 255 + 0.5).astype(np.uint8))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, baseColorFactor=factor)
    visual = trimesh.visual.TextureVisuals(uv=uvs.numpy(), material=material)
    trimesh.Trimesh(verts.numpy(), faces.numpy(), visual=visual, process=False).export(path)
    return path


@pytest.mark.parametrize("kind", ["glb", "obj"])
def test_uv_texture_is_kept(tmp_path, kind):
    verts, faces, uvs, texture = _textured_quad()
    if kind == "glb":
        path = _pbr_glb(tmp_path / "quad.glb", verts, faces, uvs, texture)
    else:
        path = export_obj(tmp_path / "quad.obj", verts, faces, uvs, texture)
    loaded = load_mesh(path)
    assert loaded.albedo_kind == "texture" and loaded.texture.shape == (4, 4, 3)
    np.testing.assert_allclose(loaded.texture, texture.numpy(), atol=1 / 255)
    assert loaded.uvs.shape == (len(loaded.vertices), 2)


def test_obj_with_welded_positions_keeps_each_corners_uv(tmp_path):
    """export_obj writes each position once and the UVs apart (f v/vt): the seams' corners keep their own UVs."""
    sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    verts, faces = torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces)
    split = fallback_uv(verts, faces)  # every face its own UVs: every vertex is on a seam
    loaded = load_mesh(export_obj(tmp_path / "a.obj", split.verts, split.faces, split.uvs, torch.rand(8, 8, 3)))
    np.testing.assert_allclose(loaded.uvs[loaded.faces], split.uvs[split.faces].numpy(), atol=1e-6)


def test_gltf_base_colour_factor_multiplies_the_texture(tmp_path):
    verts, faces, uvs, texture = _textured_quad()
    loaded = load_mesh(_pbr_glb(tmp_path / "quad.glb", verts, faces, uvs, texture, factor=(0.5, 1.0, 1.0, 1.0)))
    np.testing.assert_allclose(loaded.texture[..., 0], 0.5 * texture[..., 0].numpy(), atol=1 / 255)


def test_scene_is_flattened_with_its_transforms(tmp_path):
    scene = trimesh.Scene()
    for i, colour in enumerate(([200, 30, 30, 255], [30, 30, 200, 255])):
        box = trimesh.creation.box(extents=(1, 1, 1))
        box.visual.vertex_colors = colour
        move = trimesh.transformations.translation_matrix([10 * i, 0, 5])
        scene.add_geometry(box, node_name=f"box{i}", transform=move)
    scene.export(tmp_path / "boxes.glb")
    loaded = load_mesh(tmp_path / "boxes.glb")
    assert len(loaded.faces) == 24
    np.testing.assert_allclose(loaded.vertices.min(0), [-0.5, -0.5, 4.5], atol=1e-6)
    np.testing.assert_allclose(loaded.vertices.max(0), [10.5, 0.5, 5.5], atol=1e-6)
    assert {tuple(c) for c in np.round(loaded.colors * 255).astype(int)} == {(200, 30, 30), (30, 30, 200)}


def test_bad_files_fail_in_one_line_naming_the_file(tmp_path):
    garbage = tmp_path / "broken.glb"
    garbage.write_bytes(b"not a mesh at all")
    plain = tmp_path / "plain.ply"
    trimesh.creation.box().export(plain)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing here\n")
    cases = [(garbage, "cannot read the mesh"), (plain, "no colour: expected per-vertex colours"),
             (empty, "no triangles"), (tmp_path / "missing.glb", "no such file"),
             (tmp_path / "scan.stl", "unsupported mesh type '.stl'")]
    for path, what in cases:
        with pytest.raises(ValueError) as err:
            load_mesh(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and what in message and "\n" not in message, message
