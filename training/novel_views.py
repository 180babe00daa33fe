"""The 3D prior's novel views and how good they are: Zero-1-to-3 sampling, and its scores against the truth
beside the answers a prior must beat.

A view pair's image is mostly white background, which a blank answer gets right: the whole-image PSNR of
an all-white image is about 11 dB on the bundle's renders, and copying the source view scores about 12.
So :func:`novel_view_scores` reports, per answer, the whole-image PSNR, the PSNR on the person (the
target's silhouette) and LPIPS when a network is given, for the prior's samples over several sampling
seeds and for the two baselines (``white``, ``source_copy``), which need no seed.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from evaluation.metrics import psnr
from priors.latents import from_latents
from priors.prior_3d import Zero123SDS

WHITE = 0.99
"""A pixel with every channel above this is background: the renders are composited over pure white, and
no generated person's colour is (:mod:`training.synth`)."""


@torch.no_grad()
def novel_views(prior: Zero123SDS, source: torch.Tensor, camera: torch.Tensor, generator: torch.Generator,
                steps: int = 50, guidance_scale: float = 3.0) -> torch.Tensor:
    """Zero-1-to-3 sampling: DDIM ``steps`` from standard normal noise drawn from ``generator``, classifier-free
    guidance (u + s (c - u)), of the views of ``source`` [B, 3, S, S] (in [0, 1]) at the relative ``camera``
    [B, 1, 4]: [B, 3, S', S'] in [0, 1] at the prior's native size, decoded through :mod:`priors.latents`
    (the latents the prior was trained on are centred, so the standard normal start is theirs)."""
    ddim = DDIMScheduler.from_config(prior.parts.scheduler.config)
    ddim.set_timesteps(steps)
    c_crossattn, c_concat = prior.condition(source)
    n, dev, vae = len(source), source.device, prior.parts.vae
    keep = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(dev)
    latent = prior.parts.unet.config.sample_size
    x = torch.randn((n, vae.config.latent_channels, latent, latent), generator=generator).to(dev)
    for t in ddim.timesteps:
        xi, ctx = prior.model_inputs(torch.cat([x] * 2), c_crossattn.repeat(2, 1, 1), c_concat.repeat(2, 1, 1, 1),
                                     camera.repeat(2, 1, 1), keep)
        u, c = prior.parts.unet(xi, t, encoder_hidden_states=ctx).sample.chunk(2)
        x = ddim.step(u + guidance_scale * (c - u), t, x).prev_sample
    return (vae.decode(from_latents(vae, x).to(vae.dtype)).sample.float() * 0.5 + 0.5).clamp(0, 1)


def person_mask(images: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] float: 1 where [B, 3, S, S] renders over white show the person (:data:`WHITE`)."""
    return (images <= WHITE).any(dim=1, keepdim=True).float()


def image_scores(answer: torch.Tensor, target: torch.Tensor, lpips: torch.nn.Module | None = None) -> dict:
    """Per-pair scores of [B, 3, S, S] answers against targets in [0, 1]: ``psnr`` (whole image),
    ``psnr_person`` (inside the target's :func:`person_mask`) and ``lpips`` (None without a network)."""
    assert answer.shape == target.shape and answer.dim() == 4, (answer.shape, target.shape)
    a, b, m = answer.permute(0, 2, 3, 1), target.permute(0, 2, 3, 1), person_mask(target).permute(0, 2, 3, 1)
    scores = {"psnr": [psnr(a[i], b[i]) for i in range(len(a))],
              "psnr_person": [psnr(a[i], b[i], m[i]) for i in range(len(a))], "lpips": None}
    if lpips is not None:
        with torch.no_grad():
            scores["lpips"] = [float(v) for v in lpips(answer.float(), target.float())]
    return scores


def _mean(values: list[float] | None) -> float | None:
    if values is None:
        return None
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.mean(finite)), 3) if finite else None


def novel_view_scores(prior: Zero123SDS, source: torch.Tensor, target: torch.Tensor, camera: torch.Tensor,
                      seeds: tuple[int, ...] = (0, 1, 2), lpips: torch.nn.Module | None = None, batch: int = 8,
                      steps: int = 50, guidance_scale: float = 3.0) -> dict:
    """The prior's novel views of pairs (``source``, ``target`` [N, 3, S, S] in [0, 1], ``camera`` [N, 1, 4])
    scored against the targets, one sampling per seed, beside the ``white`` and ``source_copy`` answers.

    Returns ``{"prior": {"psnr", "psnr_person", "lpips", "per_seed": [...]}, "white": {...},
    "source_copy": {...}, "views": [N, 3, S', S'] (the first seed's samples)}``: each figure the mean
    over the pairs (a pair whose answer is exact, PSNR inf, is left out of the mean), the prior's the mean
    over the seeds too. The targets and sources are area-resized to the prior's native size first.
    """
    size = prior.native_size
    source, target = (F.interpolate(v, (size, size), mode="area") if v.shape[-1] != size else v
                      for v in (source, target))
    per_seed, first = [], None
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        views = torch.cat([novel_views(prior, source[i:i + batch], camera[i:i + batch], g, steps, guidance_scale)
                           for i in range(0, len(source), batch)])
        first = views if first is None else first
        per_seed.append({k: _mean(v) for k, v in image_scores(views, target, lpips).items()})
    report = {"prior": {k: _mean([s[k] for s in per_seed]) if per_seed[0][k] is not None else None
                        for k in ("psnr", "psnr_person", "lpips")} | {"per_seed": per_seed, "seeds": list(seeds)}}
    for name, answer in (("white", torch.ones_like(target)), ("source_copy", source)):
        report[name] = {k: _mean(v) for k, v in image_scores(answer, target, lpips).items()}
    report["views"] = first
    return report
