"""The latent map (priors.latents): a VAE's stored per-channel shift is applied wherever the priors encode
or decode, and a config without it (SD 1.5, bundles made before it) maps as before."""
import copy

import pytest
import torch

from priors import tiny
from priors.latents import from_latents, to_latents
from priors.prior_2d import StableDiffusionSDS
from priors.prior_3d import Zero123SDS
from priors.sdedit import ControlNetSDEdit
from priors.text import PromptEncoder
from priors.weights import BUNDLED_DIR
from priors.zero123_parts import Zero123Parts

DELTA = torch.tensor([0.7, -0.4, 1.5, -2.0])


def offset_twin(vae):
    """A VAE whose raw latents are ``vae``'s plus :data:`DELTA` (its encoder's mean output moved, its
    decoder's first convolution taking the move back), its config holding ``latents_mean`` = DELTA: the
    latents the priors see must be ``vae``'s exactly, and so every prior's result."""
    twin = copy.deepcopy(vae)
    with torch.no_grad():
        twin.quant_conv.bias[:4] += DELTA
        w = twin.post_quant_conv.weight[:, :, 0, 0]
        twin.post_quant_conv.bias -= w @ DELTA
    twin.register_to_config(latents_mean=DELTA.tolist())
    return twin


@pytest.fixture(scope="module")
def vaes():
    vae = tiny.vae(0)
    return vae, offset_twin(vae)


def test_the_map_inverts_and_a_config_without_a_shift_is_scaling_alone(vaes):
    vae, twin = vaes
    z = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(to_latents(vae, z), z * vae.config.scaling_factor)
    torch.testing.assert_close(from_latents(twin, to_latents(twin, z)), z)
    torch.testing.assert_close(to_latents(twin, z + DELTA.view(1, 4, 1, 1)), to_latents(vae, z))
    sd3 = copy.deepcopy(vae)
    sd3.register_to_config(shift_factor=0.5)
    torch.testing.assert_close(to_latents(sd3, z), (z - 0.5) * vae.config.scaling_factor)


def test_a_bundle_made_before_the_shift_still_loads_with_none(tmp_path):
    """A VAE folder written before train-vae stored ``latents_mean`` (its config.json has no such key)
    loads and maps by scaling alone; the bundled VAE, made after, carries the shift."""
    import json

    from diffusers import AutoencoderKL

    tiny.vae(0).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("latents_mean", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = AutoencoderKL.from_pretrained(tmp_path)
    assert old.config.get("latents_mean") is None
    z = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(to_latents(old, z), z * old.config.scaling_factor)
    bundled = AutoencoderKL.from_pretrained(BUNDLED_DIR / "tiny" / "sd" / "vae")
    assert len(bundled.config.latents_mean) == 4


def test_the_2d_prior_encodes_decodes_and_guides_on_shifted_latents(vaes):
    vae, twin = vaes
    p = tiny.sd_parts(0)
    text = PromptEncoder(p.tokenizer, p.text_encoder)
    plain, shifted = (StableDiffusionSDS(v, p.unet, text, p.scheduler, sample_posterior=False) for v in (vae, twin))
    images = torch.rand(2, 3, 32, 32)
    lat = plain.encode_images(images, None)
    torch.testing.assert_close(shifted.encode_images(images, None), lat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shifted.decode_latents(lat), plain.decode_latents(lat), atol=1e-5, rtol=1e-5)
    emb = plain.embed("a person")
    outs = [prior(images, emb, (0.2, 0.8), 7.5, None, generator=torch.Generator().manual_seed(3))
            for prior in (plain, shifted)]
    torch.testing.assert_close(outs[1].grad, outs[0].grad, atol=1e-4, rtol=1e-4)


def test_the_3d_prior_encodes_shifted_latents(vaes):
    vae, twin = vaes
    parts = Zero123Parts(tiny.unet(8, 0), vae, tiny.image_encoder(0), tiny.cc_projection(0), tiny.scheduler())
    plain, shifted = Zero123SDS(parts), Zero123SDS(Zero123Parts(parts.unet, twin, parts.image_encoder,
                                                                parts.cc_projection, parts.scheduler))
    images = torch.rand(2, 3, 32, 32)
    a, b = (prior.encode_images(images, None, torch.Generator().manual_seed(1)) for prior in (plain, shifted))
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_sdedit_encodes_and_decodes_through_the_shift(vaes):
    vae, twin = vaes
    p = tiny.sd_parts(0)
    text = PromptEncoder(p.tokenizer, p.text_encoder)
    images, control = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    outs = []
    for v in (vae, twin):
        edit = ControlNetSDEdit(v, p.unet, tiny.controlnet(0), text, p.scheduler)
        outs.append(edit(images, control, edit.embed("a person"), 0.6, 5, 3.0, 1.0, None,
                         torch.Generator().manual_seed(2)))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
