"""nvdiffrast fast paths against the PyTorch rasteriser (only where CUDA and nvdiffrast exist)."""
import pytest
import torch

from stages.render.antialias import antialias
from stages.render.cameras import orbit_cameras
from stages.render.interpolate import interpolate
from stages.render.rasterize import rasterize, transform_to_clip

from .helpers import icosphere


@pytest.mark.requires_cuda
def test_nvdiffrast_matches_torch_rasteriser():
    pytest.importorskip("nvdiffrast.torch")
    verts, faces = icosphere(4, 0.5)
    cams = orbit_cameras(torch.tensor([10.0, -20.0]), torch.tensor([30.0, 200.0]), torch.tensor([2.0, 2.5]),
                         torch.tensor([40.0, 30.0]))
    pos = transform_to_clip(verts, cams.mvp()).cuda().requires_grad_()
    tri = faces.cuda()
    fast = rasterize(pos, tri, (128, 160), backend="nvdiffrast")
    ref = rasterize(pos, tri, (128, 160), backend="torch")
    same = fast[..., 3] == ref[..., 3]
    assert same.float().mean() > 0.995  # ties on shared edges may go either way
    torch.testing.assert_close(fast[same][:, :3], ref[same][:, :3], atol=1e-4, rtol=1e-4)
    attr = verts.cuda()
    torch.testing.assert_close(interpolate(attr, fast, tri, backend="nvdiffrast")[same],
                               interpolate(attr, ref, tri, backend="torch")[same], atol=1e-4, rtol=1e-4)
    mask = (ref[..., 3:] > 0).float()
    aa_fast = antialias(mask, ref, pos, tri, backend="nvdiffrast")
    aa_ref = antialias(mask, ref, pos, tri, backend="torch")
    assert (aa_fast - aa_ref).abs().mean() < 5e-3  # the two blend silhouette pixels alike
    g_fast, = torch.autograd.grad(aa_fast.sum(), pos)
    g_ref, = torch.autograd.grad(aa_ref.sum(), pos)
    cos = torch.nn.functional.cosine_similarity(g_fast.flatten(), g_ref.flatten(), dim=0)
    assert cos > 0.9
