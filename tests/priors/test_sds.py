"""SDS math on tiny real-architecture SD models: gradient, CFG, timestep schedule, encode size."""
import pytest
import torch

from priors import sds, tiny
from priors.prior_2d import StableDiffusionSDS
from priors.text import PromptEncoder


@pytest.fixture(scope="module")
def prior():
    parts = tiny.sd_parts(seed=0)
    return StableDiffusionSDS(parts.vae, parts.unet, PromptEncoder(parts.tokenizer, parts.text_encoder),
                              parts.scheduler, sample_posterior=False)


def test_sds_gradient_is_weighted_residual_pulled_back_through_encoder(prior):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    emb = prior.embed("a person", "blurry")
    t = torch.tensor([300, 700])
    noise = torch.randn(2, 4, 16, 16)
    out = prior(images, emb, (0.02, 0.98), guidance_scale=7.5, encode_size=None, noise=noise, t=t)
    out.loss.backward()

    # Reference written out independently: encode, noise, two UNet calls, CFG, weight.
    latents = prior.vae.encode(images * 2 - 1).latent_dist.mode() * prior.vae.config.scaling_factor
    a = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise
    with torch.no_grad():
        e_c = prior.unet(z_t, t, encoder_hidden_states=emb.cond.expand(2, -1, -1)).sample
        e_u = prior.unet(z_t, t, encoder_hidden_states=emb.uncond.expand(2, -1, -1)).sample
    eps_pred = e_u + 7.5 * (e_c - e_u)
    grad = (1 - a) * (eps_pred - noise)
    torch.testing.assert_close(out.grad, grad, rtol=1e-4, atol=1e-5)
    (expected,) = torch.autograd.grad(latents, images, grad_outputs=grad / 2)
    torch.testing.assert_close(images.grad, expected, rtol=1e-4, atol=1e-6)
    assert images.grad.abs().sum() > 0


def test_cfg_standard_and_release_forms():
    c, u = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(sds.classifier_free_guidance(c, u, 5.0), u + 5.0 * (c - u))
    torch.testing.assert_close(sds.classifier_free_guidance(c, u, 5.0, "release"), c + 5.0 * (c - u))
    torch.testing.assert_close(sds.classifier_free_guidance(c, u, 1.0), c)
    with pytest.raises(ValueError):
        sds.classifier_free_guidance(c, u, 5.0, "perp")


def _ramp(start, end, begin, until, step):
    """The presets' linear ramp, written out for the test (the stages own the real one)."""
    if step <= begin:
        return start
    if step >= until:
        return end
    return start + (end - start) * (step - begin) / (until - begin)


@pytest.mark.parametrize("step,lo,hi", [(0, 700, 850), (100, 450, 675), (200, 200, 500), (4000, 200, 500)])
def test_timestep_schedule_of_stage1_at_chosen_steps(step, lo, hi):
    t_range = (_ramp(0.7, 0.2, 0, 200, step), _ramp(0.85, 0.5, 0, 200, step))
    assert sds.timestep_bounds(t_range, 1000) == (lo, hi)
    g = torch.Generator().manual_seed(0)
    t = sds.sample_timesteps(4000, t_range, 1000, generator=g)
    assert t.min().item() == lo and t.max().item() == hi


def test_timestep_range_rejects_inverted_bounds():
    with pytest.raises(ValueError, match="t_range"):
        sds.timestep_bounds((0.8, 0.2), 1000)


def test_sds_weights():
    a = torch.linspace(0.99, 0.01, 1000)
    t = torch.tensor([10, 500])
    torch.testing.assert_close(sds.sds_weight(a, t).flatten(), 1 - a[t])
    torch.testing.assert_close(sds.sds_weight(a, t, "uniform").flatten(), torch.ones(2))
    torch.testing.assert_close(sds.sds_weight(a, t, "fantasia3d").flatten(), a[t].sqrt() * (1 - a[t]))


def test_encode_at_render_size_or_resized(prior):
    images = torch.rand(1, 3, 24, 24)
    assert prior.encode_images(images, size=None).shape == (1, 4, 12, 12)
    assert prior.encode_images(images, size=32).shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="multiple"):
        prior.encode_images(torch.rand(1, 3, 23, 23), size=None)


def test_release_cfg_variant_changes_the_gradient(prior):
    images = torch.rand(1, 3, 32, 32)
    emb = prior.embed("a person")
    kw = dict(t_range=(0.5, 0.5), guidance_scale=5.0, encode_size=None, noise=torch.randn(1, 4, 16, 16))
    std = prior(images, emb, **kw)
    prior.cfg_variant = "release"
    try:
        rel = prior(images, emb, **kw)
    finally:
        prior.cfg_variant = "standard"
    assert std.t.item() == rel.t.item() == 500
    assert not torch.allclose(std.grad, rel.grad)
