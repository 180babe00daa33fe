"""The 3D prior's novel-view benchmark: scores on the person beside the whole image, LPIPS, the all-white and
copy-the-source baselines, several sampling seeds (the whole-image PSNR alone is mostly white background)."""
import math

import pytest
import torch

from priors import tiny
from priors.prior_3d import Zero123SDS
from priors.zero123_parts import Zero123Parts
from training.novel_views import image_scores, novel_view_scores, person_mask


def _person(n: int, seed: int) -> torch.Tensor:
    """[n, 3, 32, 32] renders: a coloured box on pure white."""
    g = torch.Generator().manual_seed(seed)
    images = torch.ones(n, 3, 32, 32)
    images[:, :, 8:28, 12:20] = 0.2 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)
    return images


def test_the_person_scores_ignore_the_background():
    target = _person(2, 0)
    assert person_mask(target).sum(dim=(1, 2, 3)).tolist() == [160.0, 160.0]
    white = image_scores(torch.ones_like(target), target)
    inside = ((1 - target) ** 2)[:, :, 8:28, 12:20].mean(dim=(1, 2, 3))
    assert white["psnr_person"] == pytest.approx((-10 * torch.log10(inside.double())).tolist(), rel=1e-5)
    assert all(w > p + 5 for w, p in zip(white["psnr"], white["psnr_person"]))  # 84% of the image is right
    assert white["lpips"] is None
    assert image_scores(target, target)["psnr_person"] == [math.inf, math.inf]


def test_the_benchmark_reports_the_prior_over_seeds_beside_both_baselines():
    parts = Zero123Parts(tiny.unet(8, 0), tiny.vae(0), tiny.image_encoder(0), tiny.cc_projection(0), tiny.scheduler())
    prior = Zero123SDS(parts)
    source, target = _person(3, 1), _person(3, 2)
    camera = torch.zeros(3, 1, 4)
    report = novel_view_scores(prior, source, target, camera, seeds=(0, 1), lpips=tiny.lpips(0), steps=2)
    assert set(report) == {"prior", "white", "source_copy", "views"}
    assert report["views"].shape == (3, 3, 32, 32)
    assert report["prior"]["seeds"] == [0, 1] and len(report["prior"]["per_seed"]) == 2
    a, b = (s["psnr"] for s in report["prior"]["per_seed"])
    assert a != b and report["prior"]["psnr"] == pytest.approx((a + b) / 2, abs=1e-3)
    for name in ("prior", "white", "source_copy"):
        assert {"psnr", "psnr_person", "lpips"} <= set(report[name]) and report[name]["lpips"] is not None
    for name in ("white", "source_copy"):  # mostly-right background: the person's figure is the lower one
        assert report[name]["psnr_person"] < report[name]["psnr"]
