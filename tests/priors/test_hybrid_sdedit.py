"""Hybrid SDS and its multi-view tiling, normal/depth-adapted guidance, ControlNet SDEdit."""
import pytest
import torch

from priors import tiny
from priors.adapted import AdaptedGuidance, depth_image, normal_image
from priors.hybrid import HybridSDS, Term, grid_shape, shared_noise, tile_views, untile_views
from priors.prior_2d import StableDiffusionSDS
from priors.prior_3d import Zero123Parts, Zero123SDS
from priors.sdedit import ControlNetSDEdit
from priors.text import PromptEncoder


def _sd(seed=0):
    p = tiny.sd_parts(seed)
    return StableDiffusionSDS(p.vae, p.unet, PromptEncoder(p.tokenizer, p.text_encoder), p.scheduler)


@pytest.fixture(scope="module")
def prior_2d():
    return _sd()


@pytest.fixture(scope="module")
def prior_3d():
    parts = Zero123Parts(tiny.unet(8, 1), tiny.vae(1), tiny.image_encoder(1), tiny.cc_projection(1), tiny.scheduler())
    prior = Zero123SDS(parts, cond_size=32)
    prior.set_reference(torch.rand(1, 3, 32, 32), 0.0, 0.0, 3.0)
    return prior


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_tiling_round_trips(n):
    x = torch.randn(2 * n, 3, 8, 12)
    tiled = tile_views(x, n)
    rows, cols = grid_shape(n)
    assert tiled.shape == (2, 3, rows * 8, cols * 12)
    torch.testing.assert_close(untile_views(tiled, n), x)
    torch.testing.assert_close(tiled[0, :, :8, :12], x[0])  # first view sits top-left


def test_shared_noise_is_one_sample_per_group():
    g = torch.Generator().manual_seed(0)
    noise = untile_views(shared_noise(2, 4, (4, 5, 5), g), 4)
    for k in range(1, 4):
        torch.testing.assert_close(noise[k], noise[0])
        torch.testing.assert_close(noise[4 + k], noise[4])
    assert not torch.allclose(noise[0], noise[4])


def test_hybrid_is_the_weighted_sum_and_skips_zero_weights(prior_2d, prior_3d):
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    emb = prior_2d.embed("a person")
    cams = (torch.tensor([0.0, 10.0]), torch.tensor([30.0, -60.0]), torch.tensor([3.0, 3.0]))
    hybrid = HybridSDS(prior_2d, prior_3d)
    t2, t3 = Term(0.1, 20.0, (0.5, 0.5)), Term(0.3, 5.0, (0.5, 0.5))
    out = hybrid(images, emb, *cams, t2, t3, generator=torch.Generator().manual_seed(0))
    expected = 0.1 * out.terms["sds"].loss + 0.3 * out.terms["sds_3d"].loss
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert images.grad.abs().sum() > 0
    only_2d = hybrid(images, emb, *cams, t2, Term(0.0, 5.0, (0.5, 0.5)))
    assert set(only_2d.terms) == {"sds"}


def test_multiview_trick_calls_the_unet_once_per_tiled_image(prior_2d, prior_3d):
    calls = []
    hook = prior_2d.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    images = torch.rand(4, 3, 16, 16, requires_grad=True)
    try:
        out = HybridSDS(prior_2d, prior_3d)(images, prior_2d.embed("a person"), *(torch.zeros(4),) * 3,
                                            Term(1.0, 7.5, (0.3, 0.6)), Term(0.0, 5.0, (0.5, 0.5)), multiview_tiles=4)
    finally:
        hook.remove()
    assert calls == [torch.Size([2, 4, 16, 16])]  # one [cond; uncond] call on the 2x2 tiled latent
    out.loss.backward()
    assert all(images.grad[v].abs().sum() > 0 for v in range(4))


def test_normal_and_depth_images():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1
    normal = torch.nn.functional.normalize(torch.randn(1, 3, 4, 4), dim=1)
    img = normal_image(normal, mask)
    assert img.min() >= 0 and img.max() <= 1 and img[..., 0, 0].abs().sum() == 0
    depth = torch.arange(16.0).view(1, 1, 4, 4)
    d = depth_image(depth, mask)
    assert d.shape == (1, 3, 4, 4)
    assert d[0, 0, 1, 1] == 1.0 and d[0, 0, 2, 2] == 0.0 and d[0, 0, 0, 0] == 0.0  # near bright, far dark


def test_adapted_guidance_each_model_guides_its_map():
    guide = AdaptedGuidance(_sd(1), _sd(2))
    emb_n, emb_d = guide.embed("a person")
    assert not torch.allclose(emb_n.cond, emb_d.cond)  # each model's own text encoder
    mask = torch.ones(1, 1, 32, 32)
    normal = torch.randn(1, 3, 32, 32, requires_grad=True)
    depth = torch.rand(1, 1, 32, 32, requires_grad=True)
    (guide.normal_sds(normal, mask, emb_n, (0.02, 0.8), 30.0, None).loss
     + guide.depth_sds(depth, mask, emb_d, (0.02, 0.81), 30.0, None).loss).backward()
    assert normal.grad.abs().sum() > 0 and depth.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def sdedit():
    p = tiny.sd_parts(0)
    return ControlNetSDEdit(p.vae, p.unet, tiny.controlnet(0), PromptEncoder(p.tokenizer, p.text_encoder), p.scheduler)


def test_sdedit_runs_the_last_ddim_steps_from_the_strength(sdedit):
    seen = []
    hook = sdedit.unet.register_forward_hook(lambda m, i, o: seen.append(int(i[1])))
    images, control = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    try:
        out = sdedit(images, control, sdedit.embed("a person"), strength=0.5, num_inference_steps=40, size=None,
                     generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    sdedit.scheduler.set_timesteps(40)
    assert seen == sdedit.scheduler.timesteps[20:].tolist() and len(seen) == 20  # t about 500, 500 // 25 steps
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    assert sdedit(images, control, sdedit.embed("x"), 0.0, 40, size=None).equal(images)


def test_sdedit_control_image_steers_and_scale_zero_ignores_it(sdedit):
    images, emb = torch.rand(1, 3, 32, 32), sdedit.embed("a person")
    run = lambda c, s: sdedit(images, c, emb, 0.3, 10, conditioning_scale=s, size=None,  # noqa: E731
                              generator=torch.Generator().manual_seed(1))
    a, b = run(torch.zeros(1, 3, 32, 32), 1.0), run(torch.ones(1, 3, 32, 32), 1.0)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(run(torch.zeros(1, 3, 32, 32), 0.0), run(torch.ones(1, 3, 32, 32), 0.0))


def test_multiview_trick_noises_every_tile_of_a_group_with_the_same_sample(prior_3d):
    prior = _sd()
    prior.sample_posterior = False  # deterministic latents, to rebuild what the UNet sees
    seen = []
    hook = prior.unet.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    images = torch.rand(8, 3, 16, 16)
    try:
        out = HybridSDS(prior, prior_3d)(images, prior.embed("a person"), *(torch.zeros(8),) * 3,
                                         Term(1.0, 7.5, (0.3, 0.6)), Term(0.0, 5.0, (0.5, 0.5)), multiview_tiles=4,
                                         generator=torch.Generator().manual_seed(0)).terms["sds"]
    finally:
        hook.remove()
    noise = untile_views(out.noise, 4)  # [8, 4, 8, 8]: two groups of four views
    for k in range(1, 4):
        torch.testing.assert_close(noise[k], noise[0])
        torch.testing.assert_close(noise[4 + k], noise[4])
    assert not torch.allclose(noise[0], noise[4])
    with torch.no_grad():
        latents = prior.encode_images(tile_views(images, 4), size=None)
    noisy = prior.scheduler.add_noise(latents, out.noise, out.t)
    torch.testing.assert_close(seen[0][:2], noisy)  # the cond half of the [cond; uncond] batch
    torch.testing.assert_close(seen[0][2:], noisy)


def test_encode_size_none_is_each_priors_native_size(prior_2d, prior_3d):
    sizes = {"2d": [], "3d": []}
    hooks = [prior_2d.vae.encoder.register_forward_hook(lambda m, i, o: sizes["2d"].append(tuple(i[0].shape))),
             prior_3d.parts.vae.encoder.register_forward_hook(lambda m, i, o: sizes["3d"].append(tuple(i[0].shape)))]
    images = torch.rand(2, 3, 64, 64)
    try:
        HybridSDS(prior_2d, prior_3d)(images, prior_2d.embed("a person"), *(torch.zeros(2),) * 3,
                                      Term(1.0, 7.5, (0.5, 0.5)), Term(1.0, 5.0, (0.5, 0.5)))
    finally:
        for h in hooks:
            h.remove()
    assert prior_3d.native_size == 32  # tiny: latent 16 x VAE downsampling 2 (real Zero-1-to-3: 32 x 8)
    assert sizes["2d"] == [(2, 3, 64, 64)]  # 2D prior: the render's own size
    assert sizes["3d"] == [(2, 3, 32, 32)]  # 3D prior: native (its latent must match the reference's)
