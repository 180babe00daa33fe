"""Zero-1-to-3 3D prior: LDM checkpoint conversion round trip, diffusers folder, SDS conditioning."""
import pytest
import torch
import yaml

from priors import tiny, zero123_ldm
from priors.prior_3d import Zero123Parts, Zero123SDS, relative_camera
from tests.priors.ldm_writer import clip_vision_to_openai, unet_to_ldm, vae_to_ldm


@pytest.fixture(scope="module")
def parts():
    return Zero123Parts(tiny.unet(in_channels=8, seed=3), tiny.vae(seed=4), tiny.image_encoder(seed=5),
                        tiny.cc_projection(seed=6), tiny.scheduler())


@pytest.fixture(scope="module")
def ldm_files(parts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prior3d")
    state = {**unet_to_ldm(parts.unet), **vae_to_ldm(parts.vae), **clip_vision_to_openai(parts.image_encoder),
             "cc_projection.weight": parts.cc_projection.weight.detach().clone(),
             "cc_projection.bias": parts.cc_projection.bias.detach().clone()}
    torch.save({"state_dict": state, "global_step": 105000}, folder / "last.ckpt")
    (folder / "prior_3d.yaml").write_text(yaml.safe_dump(tiny.LDM_YAML))
    return folder


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


def test_ldm_checkpoint_converts_back_to_the_same_networks(parts, ldm_files):
    loaded = zero123_ldm.load_ldm(ldm_files / "last.ckpt", ldm_files / "prior_3d.yaml")
    for name in ("unet", "vae", "image_encoder", "cc_projection"):
        _assert_same_weights(getattr(parts, name), getattr(loaded, name))
    assert loaded.unet.config.in_channels == 8
    torch.testing.assert_close(loaded.scheduler.alphas_cumprod, parts.scheduler.alphas_cumprod)
    x = torch.randn(1, 8, 8, 8)
    ctx = torch.randn(1, 1, tiny.WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(x, 10, ctx).sample, parts.unet(x, 10, ctx).sample)


def test_ldm_checkpoint_without_clip_is_refused(parts, ldm_files, tmp_path):
    state = torch.load(ldm_files / "last.ckpt", weights_only=True)["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(zero123_ldm.CLIP_PREFIX)}
    with pytest.raises(ValueError, match="CLIP image encoder"):
        zero123_ldm.convert_ldm(state, tiny.LDM_YAML)


class Callback:
    """A Lightning callback stand-in: an object that is not a tensor."""


def test_pickled_objects_need_trust(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "callbacks": Callback()}, path)
    with pytest.raises(ValueError, match="trust_prior_3d_pickle"):
        zero123_ldm.load_ldm_state_dict(path)
    assert zero123_ldm.load_ldm_state_dict(path, trusted=True)["w"].item() == 1.0


def test_diffusers_folder_round_trip_offline(parts, ldm_files, tmp_path):
    zero123_ldm.convert_to_folder(ldm_files / "last.ckpt", ldm_files / "prior_3d.yaml", tmp_path / "p3")
    again = Zero123Parts.from_pretrained(tmp_path / "p3")
    for name in ("unet", "vae", "image_encoder", "cc_projection"):
        _assert_same_weights(getattr(parts, name), getattr(again, name))


def test_relative_camera_matches_zero123_convention():
    cam = relative_camera(torch.tensor([30.0]), torch.tensor([120.0]), torch.tensor([3.5]), (10.0, 30.0, 3.0))
    expected = torch.tensor([torch.deg2rad(torch.tensor(-20.0)), 1.0, 0.0, 0.5])
    torch.testing.assert_close(cam.squeeze(), expected, atol=1e-6, rtol=0)


def test_sds_uses_camera_and_reference(parts):
    prior = Zero123SDS(parts, cond_size=32)
    ref = torch.rand(1, 3, 40, 40)
    prior.set_reference(ref, 0.0, 0.0, 3.0)
    assert prior.c_concat.shape == (1, 4, 16, 16) and prior.c_crossattn.shape == (1, 1, tiny.WIDTH)
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    kw = dict(t_range=(0.5, 0.5), guidance_scale=5.0, encode_size=None, noise=torch.randn(1, 4, 16, 16),
              generator=torch.Generator().manual_seed(0))
    front = prior(images, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    side = prior(images, torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([3.0]), **kw)
    assert not torch.allclose(front.grad, side.grad)
    side.loss.backward()
    assert images.grad.abs().sum() > 0


def test_default_sizes_make_render_and_reference_latents_match(parts):
    """Without sizes given, the reference and the renders are both encoded at the native side, so the
    render latent can be concatenated with the reference's whatever the two images' sizes."""
    prior = Zero123SDS(parts)
    assert prior.cond_size == prior.native_size
    prior.set_reference(torch.rand(1, 3, 40, 40), 0.0, 0.0, 3.0)
    images = torch.rand(2, 3, 48, 48, requires_grad=True)
    out = prior(images, torch.zeros(2), torch.tensor([0.0, 90.0]), torch.full((2,), 3.0), (0.5, 0.5), 5.0,
                generator=torch.Generator().manual_seed(0))
    assert out.grad.shape[-2:] == prior.c_concat.shape[-2:]
    out.loss.backward()
    assert images.grad.abs().sum() > 0


ZERO123_YAML = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
    "unet_config": {"params": {
        "image_size": 32, "in_channels": 8, "out_channels": 4, "model_channels": 320,
        "attention_resolutions": [4, 2, 1],
        "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8, "use_spatial_transformer": True,
        "transformer_depth": 1, "context_dim": 768, "use_checkpoint": True, "legacy": False}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}}}}}
"""The Zero-1-to-3 release yaml (sd-objaverse-finetune-c_concat-256), the architecture of GeneMAN's 3D prior."""


def test_real_size_zero123_checkpoint_converts_on_the_meta_device():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from priors.profile import SD15_UNET, SD15_VAE

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(in_channels=8, **SD15_UNET), AutoencoderKL(**SD15_VAE)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(  # OpenAI CLIP ViT-L/14
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
            patch_size=14, projection_dim=768, hidden_act="quick_gelu"))
        proj = torch.nn.Linear(772, 768)
        state = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_vision_to_openai(clip),
                 "cc_projection.weight": proj.weight, "cc_projection.bias": proj.bias}
        parts = zero123_ldm.convert_ldm(state, ZERO123_YAML)
    for ours, ref in ((parts.unet, unet), (parts.vae, vae), (parts.image_encoder, clip)):
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert parts.image_encoder.config.num_attention_heads == 16 and parts.image_encoder.config.image_size == 224
    assert parts.unet.config.sample_size == 32 and parts.cc_projection.in_features == 772
    assert Zero123SDS(parts).native_size == 256  # renders are encoded at 256 whatever the render size


def test_sds_gradient_matches_zero123_conditioning_written_out(parts):
    """Known answer: two explicit UNet calls as Zero-1-to-3 / the release make them.

    cond: context cc_projection([CLIP(ref), T]) and the unscaled VAE latent (mode) of the reference
    on the extra 4 input channels; uncond: zero context and zero concat latent; standard CFG.
    """
    prior = Zero123SDS(parts, cond_size=32)
    torch.manual_seed(2)
    ref = torch.rand(1, 3, 32, 32)  # at cond_size and CLIP size: no resize on the reference
    prior.set_reference(ref, 0.0, 0.0, 3.0)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    t, noise = torch.tensor([300, 700]), torch.randn(2, 4, 16, 16)
    elev, azim, dist = torch.tensor([10.0, -20.0]), torch.tensor([30.0, 200.0]), torch.tensor([3.5, 3.0])
    out = prior(images, elev, azim, dist, (0.02, 0.98), 4.0, noise=noise, t=t,
                generator=torch.Generator().manual_seed(7))

    p = parts
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ((0.48145466, 0.4578275, 0.40821073),
                                                               (0.26862954, 0.26130258, 0.27577711)))
    with torch.no_grad():
        clip = p.image_encoder(pixel_values=(ref - mean) / std).image_embeds[:, None]  # [1, 1, D]
        concat = p.vae.encode(ref * 2 - 1).latent_dist.mode().expand(2, -1, -1, -1)  # unscaled
        d_azim = torch.deg2rad(azim)
        cam = torch.stack([torch.deg2rad(-elev), d_azim.sin(), d_azim.cos(), dist - 3.0], -1)[:, None]
        ctx = p.cc_projection(torch.cat([clip.expand(2, -1, -1), cam], -1))
        latents = p.vae.encode(images * 2 - 1).latent_dist.sample(torch.Generator().manual_seed(7))
        latents = latents * p.vae.config.scaling_factor
        a = p.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * latents + (1 - a).sqrt() * noise
        e_c = p.unet(torch.cat([z_t, concat], 1), t, encoder_hidden_states=ctx).sample
        zero = torch.zeros_like
        e_u = p.unet(torch.cat([z_t, zero(concat)], 1), t, encoder_hidden_states=zero(ctx)).sample
    grad = (1 - a) * (e_u + 4.0 * (e_c - e_u) - noise)
    torch.testing.assert_close(out.grad, grad, rtol=1e-4, atol=1e-5)
