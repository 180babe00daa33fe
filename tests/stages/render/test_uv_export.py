import pytest
import torch

from stages.render import uv as U
from stages.render.export import export_glb, export_obj, load_textured
from stages.render.interpolate import interpolate

from .helpers import icosphere


def _no_overlap(uvs, faces, size=128):
    """Every texel centre lies in at most one UV triangle (checked by brute force on a grid)."""
    c = (torch.arange(size).float() + 0.5) / size
    pts = torch.stack(torch.meshgrid(c, c, indexing="xy"), dim=-1).reshape(-1, 2)
    t = uvs[faces]
    hits = torch.zeros(pts.shape[0])
    for tri in t:
        a, b, c_ = tri
        def cross(o, p, q):
            return (p[0] - o[0]) * (q[:, 1] - o[1]) - (p[1] - o[1]) * (q[:, 0] - o[0])
        s = torch.stack([cross(a, b, pts), cross(b, c_, pts), cross(c_, a, pts)])
        hits += ((s > 1e-7).all(0) | (s < -1e-7).all(0)).float()
    return hits.max() <= 1


def test_xatlas_unwrap_in_subprocess():
    verts, faces = icosphere(2, 0.5)
    m = U.unwrap_uv(verts, faces, timeout=60)
    assert m.method == "xatlas" and m.note == ""
    assert m.uvs.min() >= 0 and m.uvs.max() <= 1
    torch.testing.assert_close(m.verts, verts[m.vmapping])
    assert m.faces.shape == faces.shape
    assert _no_overlap(m.uvs, m.faces)


def test_timeout_and_crash_fall_back(monkeypatch):
    verts, faces = icosphere(2, 0.5)
    timed_out = U.unwrap_uv(verts, faces, timeout=1e-3)
    assert timed_out.method == "fallback" and "timed out" in timed_out.note
    monkeypatch.setattr(U, "_XATLAS_SCRIPT", "import os; os.abort()")  # a segfault-like death
    m = U.unwrap_uv(verts, faces)
    assert m.method == "fallback" and "crashed (signal 6)" in m.note
    assert _no_overlap(m.uvs, m.faces)
    torch.testing.assert_close(m.verts, verts[faces.reshape(-1)])


def test_rasterize_uv_and_bake_positions():
    verts, faces = icosphere(1, 0.5)
    m = U.fallback_uv(verts, faces)
    rast = U.rasterize_uv(m.uvs, m.faces, 128)
    covered = rast[0, ..., 3] > 0
    assert 0.2 < covered.float().mean() < 0.9
    pos = interpolate(m.verts, rast, m.faces)[0]
    r = pos[covered].norm(dim=-1)
    assert r.max() <= 0.5 + 1e-5 and r.min() > 0.35  # texels land on the mesh surface
    # texel (row, col) holds the triangle whose UVs contain (col + 0.5, size - row - 0.5) / size
    row, col = covered.nonzero()[0].tolist()
    f = int(rast[0, row, col, 3]) - 1
    uv = torch.tensor([(col + 0.5) / 128, 1 - (row + 0.5) / 128])
    bary = rast[0, row, col, :2]
    t = m.uvs[m.faces[f]]
    torch.testing.assert_close(bary[0] * t[0] + bary[1] * t[1] + (1 - bary.sum()) * t[2], uv, atol=1e-5, rtol=0)


def test_sample_texture_bilinear_and_orientation():
    tex = torch.zeros(2, 2, 1)
    tex[0, 0] = 1.0  # top-left texel: u small, v large
    torch.testing.assert_close(U.sample_texture(tex, torch.tensor([[0.25, 0.75]])), torch.tensor([[1.0]]))
    torch.testing.assert_close(U.sample_texture(tex, torch.tensor([[0.5, 0.5]])), torch.tensor([[0.25]]))
    tex = torch.rand(4, 4, 3, requires_grad=True)
    uv = torch.rand(2, 5, 2, requires_grad=True)
    out = U.sample_texture(tex[None].expand(2, 4, 4, 3), uv)
    out.sum().backward()
    assert out.shape == (2, 5, 3) and tex.grad.abs().sum() > 0 and uv.grad.abs().sum() > 0


def test_pad_texture_fills_seams():
    tex = torch.zeros(8, 8, 3)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    tex[2:4, 2:4] = torch.tensor([0.2, 0.4, 0.6])
    mask[2:4, 2:4] = True
    out = U.pad_texture(tex, mask, iterations=2)
    torch.testing.assert_close(out[0:6, 0:6], torch.tensor([0.2, 0.4, 0.6]).expand(6, 6, 3))
    torch.testing.assert_close(out[7, 7], torch.tensor([0.2, 0.4, 0.6]))  # beyond reach: mean colour
    torch.testing.assert_close(out[mask], tex[mask])


@pytest.mark.parametrize("kind", ["glb", "obj"])
def test_export_reloads_with_uvs_and_texture(tmp_path, kind):
    verts, faces = icosphere(2, 0.5)
    m = U.fallback_uv(verts, faces)
    tex = torch.rand(32, 48, 3, generator=torch.Generator().manual_seed(0))
    path = (export_glb if kind == "glb" else export_obj)(tmp_path / f"avatar.{kind}", m.verts, m.faces, m.uvs, tex)
    if kind == "obj":
        assert (tmp_path / "avatar.mtl").exists() and (tmp_path / "avatar_albedo.png").exists()
    v2, f2, uv2, t2 = load_textured(path)
    # corner by corner (the OBJ holds welded positions, so its reader may number the vertices anew)
    torch.testing.assert_close(v2[f2], m.verts[m.faces])
    torch.testing.assert_close(uv2[f2], m.uvs[m.faces], atol=1e-6, rtol=0)
    torch.testing.assert_close(t2, tex, atol=1 / 255, rtol=0)
