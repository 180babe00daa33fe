"""Geometry and image metrics against known answers."""
import math

import numpy as np
import pytest
import torch
import trimesh
from skimage.metrics import structural_similarity

from evaluation.metrics import (
    bbox_diagonal,
    chamfer_l1,
    fscore,
    geometry_metrics,
    normal_consistency,
    psnr,
    sample_surface,
    sampling_floor,
    ssim,
)

SQUARE = (np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]), np.array([[0, 1, 2], [0, 2, 3]]))


def _sphere(radius):
    s = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    return s.vertices, s.faces


def test_samples_are_uniform_over_area_and_seeded():
    # two triangles of areas 1/2 and 1 either side of x + y = 1: a third of the samples fall in the first
    v = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 0], [0, 1, 0]])
    p, _ = sample_surface((v, np.array([[0, 1, 2], [1, 3, 4]])), 40_000, seed=3)
    assert abs((p[:, 0] + p[:, 1] <= 1).mean() - 1 / 3) < 0.01
    np.testing.assert_array_equal(p, sample_surface((v, np.array([[0, 1, 2], [1, 3, 4]])), 40_000, seed=3)[0])


def test_mesh_against_itself_scores_perfectly_to_the_sampling_floor():
    sphere = _sphere(1.0)
    m = geometry_metrics(sphere, sphere)
    assert m["fscore"] == 1.0
    floor = sampling_floor(4 * math.pi)  # 0.0056 at 100k samples
    assert 0.8 * floor < m["chamfer_l1"] < 1.2 * floor, (m["chamfer_l1"], floor)
    assert m["normal_consistency"] > 0.999


def test_shift_by_d_gives_chamfer_d_and_fscore_zero():
    d = 0.1  # >> tau = 1% of the diagonal sqrt(2)
    shifted = (SQUARE[0] + [0, 0, d], SQUARE[1])
    m = geometry_metrics(shifted, SQUARE)
    torch.testing.assert_close(m["chamfer_l1"], d, rtol=1e-3, atol=0)
    assert m["tau"] == pytest.approx(0.01 * math.sqrt(2))
    assert m["fscore"] == 0.0 and m["normal_consistency"] == pytest.approx(1.0)


def test_concentric_spheres_chamfer_is_the_radius_gap():
    torch.testing.assert_close(chamfer_l1(_sphere(1.2), _sphere(1.0)), 0.2, rtol=0, atol=2e-3)


def test_fscore_threshold_decides():
    shifted = (SQUARE[0] + [0, 0, 0.01], SQUARE[1])
    assert fscore(shifted, SQUARE, tau=0.02) == 1.0
    assert fscore(shifted, SQUARE, tau=0.005) == 0.0
    assert bbox_diagonal(SQUARE) == pytest.approx(math.sqrt(2))


def test_perpendicular_planes_have_zero_normal_consistency():
    upright = (SQUARE[0][:, [0, 2, 1]], SQUARE[1])  # the square in the xz plane, crossing the first
    assert normal_consistency(upright, SQUARE, n=20_000) == pytest.approx(0.0, abs=1e-9)


def test_psnr_known_answers():
    a = torch.zeros(8, 8, 3)
    assert psnr(a, a) == math.inf
    assert psnr(a, torch.full((8, 8, 3), 0.1)) == pytest.approx(20.0)
    b = a.clone()
    b[:4] = 0.01  # errors only in the top half; the mask selects the bottom half
    mask = torch.zeros(8, 8)
    mask[4:] = 1
    assert psnr(a, b, mask) == math.inf
    assert psnr(a, b, 1 - mask) == pytest.approx(40.0)
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / (0.5 * 1e-4)))


def test_ssim_matches_skimage():
    rng = np.random.default_rng(0)
    a = rng.random((48, 40, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    ref = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    torch.testing.assert_close(ssim(a, b), float(ref), rtol=0, atol=1e-10)
    assert ssim(a, a) == pytest.approx(1.0)
    batch = np.stack([a, b])
    torch.testing.assert_close(ssim(batch, batch[::-1].copy()), float(ref), rtol=0, atol=1e-10)
