import math

import pytest
import torch

from stages.render import cameras as C
from stages.render.rasterize import transform_to_clip


def test_intrinsics_from_fovy():
    k = C.intrinsics(90.0, 100, 200)
    assert k[0, 0].item() == pytest.approx(50.0)
    assert k[1, 1].item() == pytest.approx(50.0)
    assert k[0, 2].item() == 100 and k[1, 2].item() == 50


def test_look_at_is_rigid_and_looks_at_target():
    eye = torch.tensor([[1.0, 2.0, 0.5], [-3.0, 0.2, 1.0]])
    target = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0]])
    c2w = C.look_at(eye, target)
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)
    assert torch.det(rot).allclose(torch.ones(2))
    forward = -rot[:, :, 2]
    torch.testing.assert_close(forward, torch.nn.functional.normalize(target - eye, dim=-1))
    assert (rot[:, 2, 1] > 0).all()  # camera up has a positive world-z component


def test_reference_camera_sits_on_plus_x():
    cam = C.reference_camera()
    torch.testing.assert_close(cam.position, torch.tensor([[3.0, 0.0, 0.0]]))
    assert cam.fovy.item() == 20.0


def test_turntable_matches_protocol():
    cams = C.turntable()
    assert len(cams) == 120
    torch.testing.assert_close(cams.azimuth, torch.linspace(0, 360, 121)[:-1])
    assert (cams.elevation == 0).all() and (cams.distance == 3).all() and (cams.fovy == 20).all()
    torch.testing.assert_close(cams.c2w[0], C.reference_camera().c2w[0])
    torch.testing.assert_close(cams.position.norm(dim=-1), torch.full((120,), 3.0))


def test_sample_orbit_respects_ranges():
    g = torch.Generator().manual_seed(0)
    cams = C.sample_orbit(500, (-10, 45), (-180, 180), (2.5, 3.5), (15, 25), generator=g)
    for value, (lo, hi) in [(cams.elevation, (-10, 45)), (cams.azimuth, (-180, 180)),
                            (cams.distance, (2.5, 3.5)), (cams.fovy, (15, 25))]:
        assert value.min() >= lo and value.max() <= hi
        assert value.max() - value.min() > 0.8 * (hi - lo)
    torch.testing.assert_close(cams.position.norm(dim=-1), cams.distance)
    elev = torch.rad2deg(torch.asin(cams.position[:, 2] / cams.distance))
    torch.testing.assert_close(elev, cams.elevation, atol=1e-3, rtol=0)


def test_part_cameras_ratios_and_distances():
    centres = torch.tensor([[0.0, 0, 0], [0, 0, 0.7], [0, 0, 0.3], [0, 0, -0.4]])
    g = torch.Generator().manual_seed(1)
    cams, part = C.sample_part_cameras(4000, centres, generator=g)
    share = torch.bincount(part, minlength=4).float() / 4000
    torch.testing.assert_close(share, torch.tensor([0.7, 0.1, 0.1, 0.1]), atol=0.03, rtol=0)
    dist = (cams.position - centres[part]).norm(dim=-1)
    for p, (lo, hi) in enumerate([(3.0, 3.5), (0.8, 1.0), (1.5, 2.0), (1.5, 2.0)]):
        assert dist[part == p].min() >= lo - 1e-5 and dist[part == p].max() <= hi + 1e-5
    torch.testing.assert_close(cams.target, centres[part])
    assert cams.fovy.min() >= 20 and cams.fovy.max() <= 25
    assert cams.elevation.abs().max() <= 20


def test_rays_and_projection_agree():
    """A point on the ray through pixel (i, j) projects back to pixel (i, j)."""
    cams = C.orbit_cameras(torch.tensor([15.0]), torch.tensor([40.0]), torch.tensor([3.0]), torch.tensor([30.0]))
    h, w = 24, 32
    o, d = cams.rays(h, w)
    pts = (o + 2.5 * d).reshape(-1, 3)
    clip = transform_to_clip(pts, cams.mvp(w / h))[0]
    ndc = clip[:, :2] / clip[:, 3:]
    px = (ndc[:, 0] + 1) * w / 2 - 0.5
    py = (ndc[:, 1] + 1) * h / 2 - 0.5
    jj, ii = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    torch.testing.assert_close(px, ii.reshape(-1), atol=1e-3, rtol=0)
    torch.testing.assert_close(py, jj.reshape(-1), atol=1e-3, rtol=0)


def test_top_row_looks_up():
    cam = C.reference_camera()
    _, d = cam.rays(8, 8)
    assert d[0, 0, :, 2].mean() > 0 > d[0, -1, :, 2].mean()
    assert math.isclose(float(C.focal_length(20.0, 512)), 256 / math.tan(math.radians(10)), rel_tol=1e-5)
