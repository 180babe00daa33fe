"""Precision, attention kernel, attention slicing and sequential CPU offload for frozen networks."""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from priors.config import Config

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """Weight dtype for ``name`` on ``device``.

    ``auto`` is fp16 on CUDA and fp32 elsewhere; ``fp16`` on a CPU falls back to bf16 (CPU
    kernels for fp16 convolutions are slow or missing), with a warning; ``bf16`` on a CUDA device
    without bf16 support falls back to fp16.

    Example:
        >>> resolve_dtype("auto", "cpu")
        torch.float32
    """
    kind = torch.device(device).type
    if name == "auto":
        return torch.float16 if kind == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected auto, fp32, fp16 or bf16")
    if name == "fp16" and kind == "cpu":
        log.warning("fp16 weights requested on a CPU: using bf16 instead")
        return torch.bfloat16
    if name == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16 support: using fp16 instead")
        return torch.float16
    return _DTYPES[name]


def _set_attention(module: torch.nn.Module, cfg: Config, device: torch.device) -> None:
    """SDPA everywhere; xformers only where asked, on CUDA, and importable."""
    if not hasattr(module, "set_attn_processor"):
        return  # transformers models use SDPA through their own attn_implementation
    if cfg.attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            log.warning("xformers is not installed: using PyTorch SDPA attention")
        else:
            if device.type == "cuda":
                module.enable_xformers_memory_efficient_attention()
                return
            log.warning("xformers needs CUDA: using PyTorch SDPA attention")
    elif cfg.attention != "sdpa":
        raise ValueError(f"unknown attention {cfg.attention!r}; expected sdpa or xformers")
    from diffusers.models.attention_processor import AttnProcessor2_0

    module.set_attn_processor(AttnProcessor2_0())
    if cfg.attention_slicing and hasattr(module, "set_attention_slice"):
        module.set_attention_slice("auto")


def prepare(module: torch.nn.Module, cfg: Config, device: torch.device | str) -> torch.nn.Module:
    """Freeze ``module``, cast it, set its attention kernel and place it (or offload it).

    With ``cfg.cpu_offload`` on a CUDA device the weights stay on the CPU and each leaf layer
    moves to the GPU only while it runs (diffusers group offloading at leaf level, i.e.
    sequential offload); elsewhere the module moves to ``device``.
    """
    device = torch.device(device)
    module.requires_grad_(False).eval()
    # torch's own cast: diffusers' ModelMixin.to warns on every dtype cast ("modules that should be kept in
    # float32: []") even when no module is to be kept, which is noise on every run; the cast is the same
    torch.nn.Module.to(module, dtype=resolve_dtype(cfg.dtype, device))
    _set_attention(module, cfg, device)
    if cfg.cpu_offload and device.type == "cuda":
        from diffusers.hooks import apply_group_offloading

        apply_group_offloading(module, onload_device=device, offload_type="leaf_level")
        return module
    return module.to(device)


@contextmanager
def quiet_loading(errors_only: bool = False):
    """No weight-loading bar from transformers while a text or image encoder loads (one a model: noise
    beside geneman's own progress, and in batch logs); ``errors_only``: no load report either."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    if errors_only:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()
