"""TexturedMesh.export: what final/ holds (GLB, OBJ + MTL + PNG, turntable video, preview), read back."""
import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from stages import final
from stages.final import FORMATS, PREVIEW_AZIMUTHS, ExportConfig
from stages.mesh_result import MeshResult
from stages.render.cameras import orbit_cameras, turntable
from stages.render.export import to_scene_frame, to_uint8
from stages.render.uv import fallback_uv
from stages.textured_mesh import TexturedMesh
from tests.stages.render.helpers import icosphere

SMALL = ExportConfig(turntable_resolution=64, turntable_fps=10, preview_resolution=48)


@pytest.fixture
def avatar() -> TexturedMesh:
    """A textured icosphere (fallback atlas) with a seeded 64 x 64 texture: left half red-ish, right half noise."""
    verts, faces = icosphere(2, 0.4)
    uv = fallback_uv(verts, faces)
    texture = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(1))
    texture[:, :32] = torch.tensor([0.8, 0.2, 0.1])
    return TexturedMesh(verts, uv.vmapping, uv.uvs, uv.faces, texture)


def test_export_writes_every_format_and_nothing_else(tmp_path, avatar):
    paths = avatar.export(tmp_path / "final", list(FORMATS), SMALL)
    names = ["avatar.glb", "avatar.obj", "turntable.mp4", "preview.png"]
    assert paths == [tmp_path / "final" / n for n in names]
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == sorted(names + ["avatar.mtl", "avatar_albedo.png"])


@pytest.mark.parametrize("name", ["avatar.glb", "avatar.obj"])
def test_meshes_reload_with_the_texture_in_the_scene_frame(tmp_path, avatar, name):
    avatar.export(tmp_path, [name.split(".")[1]], SMALL)
    mesh = trimesh.load(tmp_path / name, force="mesh", process=False)
    verts, faces, uvs = avatar.split()
    back = torch.tensor(to_scene_frame(mesh.vertices), dtype=torch.float32)  # undo the y-up rotation
    torch.testing.assert_close(back[torch.as_tensor(mesh.faces)], verts[faces])
    np.testing.assert_allclose(np.asarray(mesh.visual.uv)[mesh.faces], uvs[faces].numpy(), atol=1e-6)
    material = mesh.visual.material
    image = material.baseColorTexture if name.endswith("glb") else material.image
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), to_uint8(avatar.texture))
    if name.endswith("glb"):
        assert np.asarray(material.baseColorFactor).tolist() == [255, 255, 255, 255]  # 1.0 (trimesh's uint8 form)


def test_turntable_is_the_120_evaluation_views(tmp_path, avatar):
    (path,) = avatar.export(tmp_path, ["turntable"], SMALL)
    reader = imageio.get_reader(path, "ffmpeg")
    frames = [f for f in reader]
    meta = reader.get_meta_data()
    reader.close()
    assert len(frames) == 120 and frames[0].shape == (64, 64, 3) and meta["fps"] == 10
    views = [0, 30, 60]
    truth = to_uint8(avatar.render(turntable(120)[views], 64, 64)["rgb"]).astype(float)
    for i, k in enumerate(views):  # each frame is its view (within H.264 and 4:2:0 chroma's loss), no other one
        errors = [np.abs(frames[k].astype(float) - truth[j]).mean() for j in range(len(views))]
        others = [e for j, e in enumerate(errors) if j != i]
        assert errors[i] < 12 and errors[i] < 0.5 * min(others), (k, errors)


def test_preview_is_four_views_side_by_side(tmp_path, avatar):
    (path,) = avatar.export(tmp_path, ["preview"], SMALL)
    image = np.asarray(Image.open(path))
    assert image.shape == (48, 4 * 48, 3)
    n = len(PREVIEW_AZIMUTHS)
    cams = orbit_cameras(torch.zeros(n), torch.tensor(PREVIEW_AZIMUTHS), torch.full((n,), 3.0), torch.full((n,), 20.0))
    truth = to_uint8(avatar.render(cams, 48, 48)["rgb"])
    for i in range(n):
        np.testing.assert_array_equal(image[:, 48 * i:48 * (i + 1)], truth[i])
    assert (image[0, 0] == 255).all()  # white background


def test_a_failed_export_leaves_no_partial_file(tmp_path, avatar, monkeypatch):
    folder = tmp_path / "final"
    avatar.export(folder, ["turntable"], SMALL)
    old = (folder / "turntable.mp4").read_bytes()

    real = final.turntable_frames

    def failing(render, size):  # ffmpeg has had 20 frames when the render fails
        for i, frame in enumerate(real(render, size)):
            if i == 20:
                raise RuntimeError("render failed")
            yield frame

    monkeypatch.setattr(final, "turntable_frames", failing)
    with pytest.raises(RuntimeError, match="render failed"):
        avatar.export(folder, ["turntable"], SMALL)
    assert (folder / "turntable.mp4").read_bytes() == old
    assert sorted(p.name for p in folder.iterdir()) == ["turntable.mp4"]


def test_unknown_or_no_format_is_refused_before_writing(tmp_path, avatar):
    with pytest.raises(ValueError, match="unknown export format 'fbx'; choose from glb, obj, turntable, preview"):
        avatar.export(tmp_path / "final", ["glb", "fbx"])
    with pytest.raises(ValueError, match="no export formats"):
        avatar.export(tmp_path / "final", [])
    assert not (tmp_path / "final").exists()


def test_odd_turntable_size_is_refused(tmp_path, avatar):
    with pytest.raises(ValueError, match="odd"):
        avatar.export(tmp_path, ["turntable"], ExportConfig(turntable_resolution=63))
    assert list(tmp_path.iterdir()) == []


def test_geometry_results_export_vertex_colours_in_the_gltf_frame(tmp_path):
    verts, faces = icosphere(1, 0.4)
    colors = torch.rand(verts.shape[0], 3, generator=torch.Generator().manual_seed(2))
    paths = MeshResult(verts, faces, colors).export(tmp_path, list(FORMATS), SMALL)
    assert [p.name for p in paths] == ["mesh.glb", "mesh.obj", "turntable.mp4", "preview.png"]
    for name in ("mesh.glb", "mesh.obj"):
        mesh = trimesh.load(tmp_path / name, force="mesh", process=False)
        np.testing.assert_allclose(to_scene_frame(mesh.vertices), verts.numpy(), atol=1e-6)
        np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3] / 255.0, colors.numpy(), atol=0.5 / 255)
    assert np.asarray(Image.open(tmp_path / "preview.png")).shape == (48, 4 * 48, 3)
