"""Precision and attention options: dtype resolution, SDPA / slicing, bf16 SDS on the CPU, xformers on CUDA."""
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

from priors import memory, tiny
from priors.config import Config
from priors.prior_2d import StableDiffusionSDS
from priors.text import PromptEncoder


def test_dtype_resolution():
    assert memory.resolve_dtype("auto", "cpu") == torch.float32
    assert memory.resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert memory.resolve_dtype("fp16", "cpu") == torch.bfloat16  # CPU fallback
    with pytest.raises(ValueError, match="unknown dtype"):
        memory.resolve_dtype("int8", "cpu")


def test_prepare_freezes_and_sets_attention():
    unet = memory.prepare(tiny.unet(), Config(), "cpu")
    assert not any(p.requires_grad for p in unet.parameters()) and not unet.training
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    sliced = memory.prepare(tiny.unet(), Config(attention_slicing=True), "cpu")
    assert all(isinstance(p, SlicedAttnProcessor) for p in sliced.attn_processors.values())
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 77, tiny.WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(sliced(x, 5, ctx).sample, unet(x, 5, ctx).sample, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="attention"):
        memory.prepare(tiny.unet(), Config(attention="flash3"), "cpu")


def test_bf16_sds_on_cpu_tracks_fp32():
    def build(dtype):
        p = tiny.sd_parts(0)
        cfg = Config(dtype=dtype)
        return StableDiffusionSDS(memory.prepare(p.vae, cfg, "cpu"), memory.prepare(p.unet, cfg, "cpu"),
                                  PromptEncoder(p.tokenizer, p.text_encoder), p.scheduler, sample_posterior=False)

    images = torch.rand(1, 3, 32, 32)
    kw = dict(t_range=(0.5, 0.5), guidance_scale=7.5, encode_size=None, noise=torch.randn(1, 4, 16, 16))
    full, half = build("fp32"), build("bf16")
    g32 = full(images, full.embed("a person"), **kw).grad
    g16 = half(images, half.embed("a person"), **kw).grad
    assert g16.dtype == torch.float32 and half.unet.dtype == torch.bfloat16
    assert (g16 - g32).norm() / g32.norm() < 0.1


@pytest.mark.requires_cuda
def test_xformers_matches_sdpa_on_cuda():
    pytest.importorskip("xformers")
    x, ctx = torch.randn(1, 4, 8, 8, device="cuda"), torch.randn(1, 77, tiny.WIDTH, device="cuda")
    sdpa = memory.prepare(tiny.unet(), Config(dtype="fp32"), "cuda")
    xf = memory.prepare(tiny.unet(), Config(dtype="fp32", attention="xformers"), "cuda")
    with torch.no_grad():
        torch.testing.assert_close(xf(x, 5, ctx).sample, sdpa(x, 5, ctx).sample, rtol=1e-3, atol=1e-4)


@pytest.mark.requires_cuda
def test_sequential_offload_keeps_weights_on_the_cpu_and_matches():
    x, ctx = torch.randn(1, 4, 8, 8, device="cuda"), torch.randn(1, 77, tiny.WIDTH, device="cuda")
    plain = memory.prepare(tiny.unet(), Config(dtype="fp32"), "cuda")
    offload = memory.prepare(tiny.unet(), Config(dtype="fp32", cpu_offload=True), "cuda")
    assert next(offload.parameters()).device.type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(offload(x, 5, ctx).sample, plain(x, 5, ctx).sample)


def test_offload_is_ignored_on_the_cpu():
    unet = memory.prepare(tiny.unet(), Config(cpu_offload=True), "cpu")
    assert all(getattr(m, "_diffusers_hook", None) is None for m in unet.modules())  # no offload hooks
