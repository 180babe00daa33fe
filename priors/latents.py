"""The one map between a KL autoencoder's latents and the diffusion models' latents, both ways.

A diffusion model is trained and sampled on latents of zero mean and unit variance per channel (its
samplers start from standard normal noise); the raw posterior samples ``z`` of a VAE are neither. diffusers' VAE
config holds the map, in the form its pipelines apply (SD 1.5: ``scaling_factor`` alone; SD3 / Flux:
a scalar ``shift_factor``; SDXL-style ``latents_mean`` / ``latents_std``: per channel)::

    latents = (z - shift) * scaling_factor / std        # encode
    z       = latents * std / scaling_factor + shift    # decode

with ``shift`` the per-channel ``latents_mean`` when set, else ``shift_factor``, else 0, and ``std``
the per-channel ``latents_std`` when set, else 1. A config without the keys (SD 1.5, bundles made
before the shift) maps as before: shift 0, std 1. :meth:`training.train.Trainer.set_latent_scale`
measures the shift and the scale of a trained VAE on its data.

Example:
    >>> from priors import tiny
    >>> vae = tiny.vae()
    >>> vae.register_to_config(scaling_factor=0.5, latents_mean=[1.0, 0.0, 0.0, -1.0])
    >>> z = torch.ones(1, 4, 2, 2)
    >>> to_latents(vae, z)[0, :, 0, 0].tolist()
    [0.0, 0.5, 0.5, 1.0]
    >>> torch.equal(from_latents(vae, to_latents(vae, z)), z)
    True
"""
from __future__ import annotations

import torch


def latent_shift_and_scale(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, scale)``, each [1, C, 1, 1] on ``like``'s device and dtype: ``latents = (z - shift) * scale``."""
    cfg, c = vae.config, vae.config.latent_channels
    shift = torch.zeros(c, dtype=torch.float64)
    if cfg.get("latents_mean") is not None:
        shift = torch.as_tensor(cfg.latents_mean, dtype=torch.float64)
    elif cfg.get("shift_factor") is not None:
        shift = shift + float(cfg.shift_factor)
    std = torch.ones(c, dtype=torch.float64)
    if cfg.get("latents_std") is not None:
        std = torch.as_tensor(cfg.latents_std, dtype=torch.float64)
    assert shift.shape == std.shape == (c,), (shift.shape, std.shape, c)
    scale = float(cfg.scaling_factor) / std
    return (v.view(1, c, 1, 1).to(device=like.device, dtype=like.dtype) for v in (shift, scale))


def to_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] raw VAE latents (a posterior sample or mode) -> the diffusion model's latents."""
    shift, scale = latent_shift_and_scale(vae, z)
    return (z - shift) * scale


def from_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """The diffusion model's [B, C, h, w] latents -> raw VAE latents (what ``vae.decode`` takes)."""
    shift, scale = latent_shift_and_scale(vae, latents)
    return latents / scale + shift
