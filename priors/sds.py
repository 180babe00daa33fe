"""Score distillation sampling (DreamFusion, arXiv 2209.14988), shared by every diffusion prior.

The noising itself is the diffusers scheduler's ``add_noise``; what lives here is the part
diffusers does not have: timestep sampling from a fraction range, the CFG combination, the SDS
weight w(t) and the surrogate loss whose gradient is the SDS gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SDSOutput:
    """One SDS evaluation."""

    loss: torch.Tensor
    """Scalar surrogate loss; d loss / d latents = grad / B."""
    grad: torch.Tensor
    """[B, C, h, w] SDS gradient w(t) (eps_pred - eps) on the latents."""
    t: torch.Tensor
    """[B] timesteps used."""
    noise: torch.Tensor
    """[B, C, h, w] the Gaussian noise added."""
    noise_pred: torch.Tensor
    """[B, C, h, w] guided noise prediction."""


def timestep_bounds(t_range: tuple[float, float], num_train_timesteps: int) -> tuple[int, int]:
    """Integer bounds of a timestep-fraction range, truncated as the release does.

    A tolerance of 1e-6 keeps float noise from the caller's ramps (0.45 arriving as
    0.44999999) from dropping a step.

    Example:
        >>> timestep_bounds((0.02, 0.98), 1000)
        (20, 980)
    """
    lo, hi = t_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"t_range must satisfy 0 <= min <= max <= 1, got {t_range}")
    return math.floor(num_train_timesteps * lo + 1e-6), math.floor(num_train_timesteps * hi + 1e-6)


def sample_timesteps(batch: int, t_range: tuple[float, float], num_train_timesteps: int,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """[batch] integer timesteps uniform in ``[min_step, max_step]`` (both ends included)."""
    lo, hi = timestep_bounds(t_range, num_train_timesteps)
    hi = min(hi, num_train_timesteps - 1)
    lo = min(lo, hi)
    # drawn where the generator lives (diffusers' ``randn_tensor`` rule), else on ``device``
    where = generator.device if generator is not None else torch.device(device)
    t = torch.randint(lo, hi + 1, (batch,), generator=generator, dtype=torch.long, device=where)
    return t.to(device)


def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float,
                             variant: str = "standard") -> torch.Tensor:
    """Combine conditional and unconditional noise predictions.

    ``standard`` is Ho & Salimans (arXiv 2207.12598), eq. (6) written in eps form:
    ``eps_u + s (eps_c - eps_u)``. ``release`` is the GeneMAN / threestudio SD guidance form
    ``eps_c + s (eps_c - eps_u)``, i.e. the standard form with scale ``s + 1``.

    Example:
        >>> c, u = torch.tensor([1.0]), torch.tensor([0.0])
        >>> classifier_free_guidance(c, u, 7.5).item(), classifier_free_guidance(c, u, 7.5, "release").item()
        (7.5, 8.5)
    """
    if variant == "standard":
        return eps_uncond + scale * (eps_cond - eps_uncond)
    if variant == "release":
        return eps_cond + scale * (eps_cond - eps_uncond)
    raise ValueError(f"unknown CFG variant {variant!r}; expected standard or release")


def sds_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, strategy: str = "sds") -> torch.Tensor:
    """[B, 1, 1, 1] weight w(t) of the SDS gradient.

    ``sds``: sigma_t^2 = 1 - alpha_bar_t (DreamFusion eq. (3) as threestudio implements it);
    ``uniform``: 1; ``fantasia3d``: sqrt(alpha_bar_t) (1 - alpha_bar_t).
    """
    a = alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1).float()
    if strategy == "sds":
        return 1.0 - a
    if strategy == "uniform":
        return torch.ones_like(a)
    if strategy == "fantasia3d":
        return a.sqrt() * (1.0 - a)
    raise ValueError(f"unknown SDS weighting {strategy!r}; expected sds, uniform or fantasia3d")


def sds_surrogate(latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Scalar whose gradient with respect to ``latents`` is ``grad / B``.

    DreamFusion eq. (3) skips the UNet Jacobian; the reparameterisation
    ``0.5 ||z - sg(z - grad)||^2 / B`` gives exactly that gradient without a custom autograd op.
    """
    grad = torch.nan_to_num(grad.detach())
    target = (latents - grad).detach()
    return 0.5 * torch.nn.functional.mse_loss(latents, target, reduction="sum") / latents.shape[0]


def sds_from_prediction(latents: torch.Tensor, noise: torch.Tensor, noise_pred: torch.Tensor, t: torch.Tensor,
                        alphas_cumprod: torch.Tensor, weighting: str = "sds") -> SDSOutput:
    """Package the SDS gradient ``w(t) (eps_pred - eps)`` (DreamFusion eq. (3)) and its loss."""
    grad = sds_weight(alphas_cumprod, t, weighting) * (noise_pred.float() - noise.float())
    return SDSOutput(sds_surrogate(latents, grad.to(latents.dtype)), grad, t, noise, noise_pred)
