"""Finite-difference checks of the rasteriser's gradients: interpolation, silhouettes, and a mesh fitted
to a target silhouette."""
import pytest
import torch

from stages.render.antialias import antialias, build_topology
from stages.render.cameras import orbit_cameras
from stages.render.interpolate import interpolate
from stages.render.mesh_render import render_mesh
from stages.render.rasterize import rasterize

from .helpers import icosphere

# a triangle whose edges keep clear of pixel centres under small perturbations (16 x 16 image)
_TRI = torch.tensor([[0, 1, 2]])


def _triangle_pos(dtype=torch.float64):
    return torch.tensor([[[-0.61, -0.47, 0.1, 1.0], [0.73, -0.52, 0.2, 1.3], [0.04, 0.66, 0.3, 0.9]]], dtype=dtype)


def test_interpolation_gradcheck_attributes_and_positions():
    attr = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def f(pos, attr):
        return interpolate(attr, rasterize(pos, _TRI, (16, 16)), _TRI)

    pos = _triangle_pos().requires_grad_()
    assert torch.autograd.gradcheck(f, (pos, attr.requires_grad_()), eps=1e-6, atol=1e-6)


def test_interpolation_batched_attributes():
    pos = _triangle_pos().expand(2, 3, 4).contiguous()
    rast = rasterize(pos, _TRI, (16, 16))
    attr = torch.stack([torch.ones(3, 1), 2 * torch.ones(3, 1)]).double()
    out = interpolate(attr, rast, _TRI)
    covered = rast[..., 3] > 0
    assert covered.any()
    torch.testing.assert_close(out[0][covered[0]], torch.ones_like(out[0][covered[0]]))
    torch.testing.assert_close(out[1][covered[1]], 2 * torch.ones_like(out[1][covered[1]]))


def test_antialias_coverage_of_axis_aligned_square_is_exact():
    """Edges at pixel x = 10.3 and 20.6, y = 5.2 and 15.7: each row and column sums to the edge length."""
    w = h = 32
    pix = torch.tensor([[10.3, 5.2], [20.6, 5.2], [20.6, 15.7], [10.3, 15.7]], dtype=torch.float64)
    ndc = (pix + 0.5) / torch.tensor([w, h]) * 2 - 1
    pos = torch.cat([ndc, torch.zeros(4, 1), torch.ones(4, 1)], 1).double()[None]
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast = rasterize(pos, tri, (h, w))
    aa = antialias((rast[..., 3:] > 0).double(), rast, pos, tri)[0, ..., 0]
    torch.testing.assert_close(aa[8].sum(), torch.tensor(10.3, dtype=torch.float64))
    torch.testing.assert_close(aa[:, 15].sum(), torch.tensor(10.5, dtype=torch.float64))
    torch.testing.assert_close(aa[8, 10], torch.tensor(0.2, dtype=torch.float64))


def test_silhouette_gradient_matches_finite_differences():
    weight = torch.rand(1, 16, 16, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    topo = build_topology(_TRI)

    def loss(pos):
        rast = rasterize(pos, _TRI, (16, 16))
        return (antialias((rast[..., 3:] > 0).to(pos.dtype), rast, pos, _TRI, topo) * weight).sum()

    pos = _triangle_pos().requires_grad_()
    grad, = torch.autograd.grad(loss(pos), pos)
    assert grad[..., :2].abs().sum() > 1.0  # the mask really depends on the vertices
    eps = 1e-5
    fd = torch.zeros_like(pos)
    for v in range(3):
        for k in range(2):
            d = torch.zeros_like(pos)
            d[0, v, k] = eps
            fd[0, v, k] = (loss(pos.detach() + d) - loss(pos.detach() - d)) / (2 * eps)
    torch.testing.assert_close(grad[..., :2], fd[..., :2], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_mesh_fitted_to_target_silhouette_converges():
    """A sphere with the wrong centre and radius is moved and scaled onto a target sphere's masks."""
    verts, faces = icosphere(2, 1.0)
    cams = orbit_cameras(torch.tensor([0.0, 0.0, 60.0]), torch.tensor([0.0, 90.0, 45.0]),
                         torch.full((3,), 3.0), torch.full((3,), 40.0))
    topo = build_topology(faces)
    target_centre, target_radius = torch.tensor([0.1, -0.15, 0.05]), 0.45
    with torch.no_grad():
        target = render_mesh(verts * target_radius + target_centre, faces, cams, 48, 48, topology=topo)["mask"]
    shift = torch.tensor([-0.2, 0.2, -0.1], requires_grad=True)
    log_r = torch.tensor(-0.2, requires_grad=True)  # radius 0.82
    opt = torch.optim.Adam([shift, log_r], lr=0.02)
    for _ in range(150):
        mask = render_mesh(verts * log_r.exp() + shift, faces, cams, 48, 48, topology=topo)["mask"]
        loss = (mask - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(shift.detach(), target_centre, atol=0.02, rtol=0)
    assert abs(log_r.exp().item() - target_radius) < 0.02


def test_per_vertex_optimisation_reduces_mask_loss():
    verts, faces = icosphere(2, 0.35)
    cams = orbit_cameras(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 90.0]), torch.full((2,), 3.0),
                         torch.full((2,), 40.0))
    topo = build_topology(faces)
    with torch.no_grad():
        target = render_mesh(verts * torch.tensor([1.3, 1.0, 0.8]), faces, cams, 48, 48, topology=topo)["mask"]
    offset = torch.zeros_like(verts, requires_grad=True)
    opt = torch.optim.Adam([offset], lr=0.005)
    losses = []
    for _ in range(60):
        loss = (render_mesh(verts + offset, faces, cams, 48, 48, topology=topo)["mask"] - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


def test_face_attribute_spreads_per_face_values():
    from stages.render.interpolate import face_attribute
    pos = torch.tensor([[-0.7, -0.7, 0, 1.0], [0.7, -0.7, 0, 1.0], [0.7, 0.7, 0, 1.0], [-0.7, 0.7, 0, 1.0]])
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast = rasterize(pos, tri, (8, 8))
    out = face_attribute(torch.tensor([[1.0], [2.0]]), rast)[0, ..., 0]
    face = rast[0, ..., 3]
    assert (out[face == 1] == 1).all() and (out[face == 2] == 2).all() and (out[face == 0] == 0).all()
    assert (face == 1).any() and (face == 2).any() and (face == 0).any()
