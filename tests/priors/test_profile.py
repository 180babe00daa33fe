"""FLOP counting on the meta device: published per-network figures and per-stage bookkeeping."""
from types import SimpleNamespace as NS

import pytest

from priors import profile


def test_network_flops_match_the_published_counts():
    assert profile.unet_flops(64, batch=1) / 1e12 == pytest.approx(0.80, abs=0.01)
    assert profile.unet_flops(64) / 1e12 == pytest.approx(1.61, abs=0.01)  # CFG pass
    assert profile.vae_flops(512, backward=True) / 1e12 == pytest.approx(2.27, abs=0.01)
    assert profile.unet_flops(32, in_channels=8) < profile.unet_flops(64) / 3  # Zero-1-to-3 at 256 px


def _stages(coarse_steps=2000, tiles=1):
    ramp = NS(start=0.1, end=0.1)
    gi = NS(steps=5000, n_ref=4, resolutions=[128, 384], resolution_milestones=[3000], samples_per_ray=512,
            lambda_sds=ramp, lambda_sds_3d=0.3)
    gs = NS(steps=3000, n_ref=2, resolution=512, lambda_sds_normal=1.0, lambda_sds_depth=0.0)
    tc = NS(steps=coarse_steps, n_ref=2, resolution=1024, encode_resolution=512, multiview_tiles=tiles,
            lambda_sds=0.1, lambda_sds_3d=0.3)
    tr = NS(steps=10000, n_ref=2, resolution=1024, n_views=120, edit_every=30, ddim_stride=25,
            guidance=NS(max_t=NS(start=0.51, end=0.51)))
    return NS(geometry_init=gi, geometry_sculpt=gs, texture_coarse=tc, texture_refine=tr)


def test_stage_bookkeeping():
    rows = {r.stage: r for r in profile.profile_avatar(_stages())}
    sds_2d = profile.vae_flops(512, backward=True) + profile.unet_flops(64)
    sds_3d = profile.vae_flops(256, backward=True) + profile.unet_flops(32, in_channels=8)
    assert rows["geometry_init"].diffusion == pytest.approx(3750 * (sds_2d + sds_3d))
    assert rows["geometry_sculpt"].diffusion == pytest.approx(1500 * sds_2d)  # depth term weighted 0: skipped
    refine = rows["texture_refine"]
    assert refine.calls == "453 edits x 20 DDIM steps"
    assert refine.flops["controlnet"] == pytest.approx(453 * 20 * profile.controlnet_flops(64))


def test_multiview_tiles_scale_the_3d_term_not_the_2d_call():
    one = {r.stage: r for r in profile.profile_avatar(_stages(tiles=1))}["texture_coarse"]
    four = {r.stage: r for r in profile.profile_avatar(_stages(tiles=4))}["texture_coarse"]
    sds_3d = profile.vae_flops(256, backward=True) + profile.unet_flops(32, in_channels=8)
    assert four.diffusion - one.diffusion == pytest.approx(1000 * 3 * sds_3d)


def test_table_has_a_total_row():
    table = profile.format_table(profile.profile_avatar(_stages()))
    lines = table.splitlines()
    assert lines[0].startswith("| stage |") and lines[-1].startswith("| **total** |")
    assert len(lines) == 2 + 4 + 1
