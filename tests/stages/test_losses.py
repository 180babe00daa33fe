"""The reference silhouette and sparsity terms take the release's forms (issue 21: with a per-pixel mean the
photo's mask weighed nothing against the guidance, and the sparsity thinned the photo's own pale parts)."""
from __future__ import annotations

import torch

from stages import geometry_init, geometry_sculpt
from stages import losses as L
from stages.render.cameras import reference_camera
from tests.stages.geometry_helpers import tiny_config


def _mask(side: int, wrong: int) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(1, side, side, 1)
    opacity = mask.clone()
    opacity.view(-1)[:wrong] = 1.0
    return opacity, mask


def test_the_mask_term_weighs_each_wrong_pixel_the_same_at_any_resolution():
    for side in (32, 128):
        opacity, mask = _mask(side, 10)
        assert float(L.mask_sum(opacity, mask)) == 10.0
    two = torch.cat([_mask(32, 10)[0], _mask(32, 30)[0]]), torch.zeros(2, 32, 32, 1)
    assert float(L.mask_sum(*two)) == 20.0  # the batch's mean of the per-image sums


def test_both_geometry_stages_score_the_photo_mask_as_a_sum():
    opacity, mask = _mask(64, 7)
    cfg = tiny_config("cpu").geometry_init
    ref = geometry_init.Reference(torch.ones(1, 64, 64, 3), mask, None, None, reference_camera(0, 0, 3, 20))
    out = {"rgb": torch.ones(1, 64, 64, 3), "opacity": opacity}
    assert float(geometry_init.reference_losses(out, ref, cfg, {"depth": 0.0, "normal": 0.0})["mask"]) == 7.0
    ref2 = {"mask": mask, "normal": None, "depth": None}
    sculpt = geometry_sculpt.reference_losses({"mask": opacity}, ref2, None, tiny_config("cpu").geometry_sculpt,
                                              {"depth": 0.0}, None)
    assert float(sculpt["mask"]) == 7.0


def test_sparsity_acts_on_guidance_views_only():
    cfg = tiny_config("cpu").geometry_init
    out = {"opacity": torch.full((1, 8, 8, 1), 0.5)}
    w = {"sparsity": 10.0, "opaque": 0.0}
    gen = torch.Generator().manual_seed(0)
    assert "sparsity" not in geometry_init.regularisers(None, out, cfg, w, gen, is_ref=True)
    got = geometry_init.regularisers(None, out, cfg, w, gen, is_ref=False)["sparsity"]
    assert torch.isclose(got, torch.tensor(0.26 ** 0.5))  # the release's sqrt(opacity^2 + 0.01)
