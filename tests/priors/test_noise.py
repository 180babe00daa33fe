"""The priors' noise is drawn with diffusers' ``randn_tensor`` on the device that uses it; on the
CPU it is bitwise the noise drawn before (``torch.randn(...).to(device)``) for a seeded generator."""
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from priors import sds, tiny
from priors.hybrid import shared_noise, tile_views
from priors.prior_2d import StableDiffusionSDS
from priors.prior_3d import Zero123SDS
from priors.text import PromptEncoder
from priors.zero123_parts import Zero123Parts


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float16, torch.float64])
def test_randn_tensor_on_cpu_is_the_old_draw(dtype):
    old = torch.randn((2, 4, 6, 6), generator=seeded(3), dtype=dtype).to("cpu")
    assert torch.equal(randn_tensor((2, 4, 6, 6), seeded(3), torch.device("cpu"), dtype), old)


def test_a_cpu_generator_draws_on_the_cpu_for_another_device():
    """As diffusers documents: the CPU stream is kept, then copied (meta stands in for CUDA)."""
    assert randn_tensor((2, 3), seeded(), torch.device("meta")).device.type == "meta"
    t = sds.sample_timesteps(3, (0.02, 0.98), 1000, seeded(), "meta")
    assert t.device.type == "meta" and t.shape == (3,)
    assert sds.sample_timesteps(3, (0.02, 0.98), 1000, None, "meta").device.type == "meta"


def test_timesteps_are_the_old_draw():
    old = torch.randint(20, 981, (5,), generator=seeded(4), dtype=torch.long).to("cpu")
    assert torch.equal(sds.sample_timesteps(5, (0.02, 0.98), 1000, seeded(4)), old)


def test_shared_noise_is_the_old_draw():
    old = torch.randn((2, 4, 5, 5), generator=seeded(8)).to("cpu")
    assert torch.equal(shared_noise(2, 4, (4, 5, 5), seeded(8)), tile_views(old.repeat_interleave(4, 0), 4))


def test_2d_prior_noise_is_the_old_draw():
    p = tiny.sd_parts(0)
    prior = StableDiffusionSDS(p.vae, p.unet, PromptEncoder(p.tokenizer, p.text_encoder), p.scheduler)
    latents = torch.randn(2, 4, 8, 8, dtype=torch.float64).float()
    out = prior.sds_latents(latents, prior.embed("a person"), (0.2, 0.8), 7.5, generator=seeded(5))
    g = seeded(5)
    t = torch.randint(200, 801, (2,), generator=g, dtype=torch.long)
    noise = torch.randn(latents.shape, generator=g, dtype=latents.dtype).to(latents.device)
    assert torch.equal(out.t, t) and torch.equal(out.noise, noise)


def test_3d_prior_noise_is_the_old_draw():
    parts = Zero123Parts(tiny.unet(8, 1), tiny.vae(1), tiny.image_encoder(1), tiny.cc_projection(1), tiny.scheduler())
    prior = Zero123SDS(parts, cond_size=32)
    prior.set_reference(torch.rand(1, 3, 32, 32, generator=seeded(1)), 0.0, 0.0, 3.0)
    images, cam = torch.rand(2, 3, 32, 32, generator=seeded(2)), torch.tensor([10.0, 20.0])
    out = prior(images, cam, cam, cam + 3, (0.2, 0.8), 5.0, generator=seeded(6))
    g = seeded(6)
    latents = prior.encode_images(images, None, g)  # draws the posterior sample first, as the call does
    t = torch.randint(200, 801, (2,), generator=g, dtype=torch.long)
    noise = torch.randn(latents.shape, generator=g).to(latents.device)
    assert torch.equal(out.t, t) and torch.equal(out.noise, noise)
