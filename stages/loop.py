"""What the four stages' loops share: loss weights at a step, the one weighted sum, guidance terms,
the optimiser from named parameter groups, mixed precision, deterministic CPU kernels, and the
``Checkpoint`` protocol.

A stage's config names each loss weight ``lambda_<loss>``; its loop builds a ``dict[str, Tensor]``
keyed by ``<loss>``. :func:`weighted_sum` fails on a loss without a weight, and a test walks every
preset so that no weight is left without its loss.
"""
from __future__ import annotations

import contextlib
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from torch import Tensor

from priors.hybrid import Term
from stages.common import GuidanceConfig, OptimConfig
from stages.schedule import Ramp, ramp_value

LAMBDA = "lambda_"


class Checkpoint(Protocol):
    """What a stage's loop asks of the run store (``pipeline.run.checkpoint.Checkpointer``)."""

    folder: Path
    """The stage's ``ckpt/`` folder; its parent is the stage folder (``previews/`` goes there)."""

    def resume(self, objects: dict[str, Any]) -> int:
        """Load the newest valid checkpoint into ``objects``; return the first step to run."""

    def step_done(self, step: int, losses: dict[str, Tensor | float], objects: dict[str, Any]) -> None:
        """Report a finished step (losses may stay tensors); checkpoint when due or asked to stop."""

    def check_stop(self) -> None:
        """Stop now, saving nothing, when asked to stop: for long work before the first step (stage 2's
        SDF fit), which a resume does again from its start."""


def loss_names(cfg: Any) -> list[str]:
    """The losses a stage config weights: ``lambda_rgb`` -> ``rgb``.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     lambda_rgb: float = 1.0
        ...     steps: int = 3
        >>> loss_names(C())
        ['rgb']
    """
    return [f.name[len(LAMBDA):] for f in fields(cfg) if f.name.startswith(LAMBDA)]


def weight_at(value: Ramp | float, step: int) -> float:
    """A weight (a constant or a :class:`Ramp`) at ``step``."""
    return ramp_value(value, step) if isinstance(value, Ramp) else float(value)


def weights_at(cfg: Any, step: int) -> dict[str, float]:
    """Every loss weight of ``cfg`` at ``step``, keyed by loss name."""
    return {name: weight_at(getattr(cfg, LAMBDA + name), step) for name in loss_names(cfg)}


def weighted_sum(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``sum_k weights[k] * losses[k]``: the one place a stage's losses are combined.

    Raises:
        KeyError: a loss has no weight (its ``lambda_`` field is missing from the config).
    """
    missing = sorted(set(losses) - set(weights))
    if missing:
        raise KeyError(f"losses without a lambda_ weight in the config: {', '.join(missing)}")
    total = None
    for name, value in losses.items():
        term = weights[name] * value
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no loss to optimise at this step")
    return total


def active(weights: dict[str, float], *names: str) -> bool:
    """Whether any of the named losses has a non-zero weight now."""
    return any(weights.get(n, 0.0) != 0.0 for n in names)


def ever_active(cfg: Any, name: str) -> bool:
    """Whether the weight of loss ``name`` is non-zero at some step (constant or ramp end points)."""
    value = getattr(cfg, LAMBDA + name)
    if isinstance(value, Ramp):
        return value.start != 0.0 or value.end != 0.0
    return float(value) != 0.0


def guidance_term(g: GuidanceConfig, weight: float, step: int, encode_size: int | None = None) -> Term:
    """A guidance :class:`priors.hybrid.Term` at ``step``: CFG scale and the timestep range then."""
    return Term(weight=weight, guidance_scale=g.guidance_scale,
                t_range=(ramp_value(g.min_t, step), ramp_value(g.max_t, step)), encode_size=encode_size)


def hybrid_sds_losses(rgb: Tensor, cams, guide, cfg: Any, w: dict[str, float], step: int,
                      gen: torch.Generator | None, multiview_tiles: int = 1) -> dict[str, Tensor]:
    """The hybrid SDS losses ``sds`` / ``sds_3d`` of renders ``rgb`` [B, H, W, 3] from ``cams`` (stages 1
    and 3): ``cfg`` gives ``guidance_2d``, ``guidance_3d`` and ``encode_resolution``; terms weighted 0 now
    are not run (nothing at all when both are 0). ``multiview_tiles`` > 1: the paper's multi-view trick
    on the 2D term."""
    t2 = guidance_term(cfg.guidance_2d, w["sds"], step, cfg.encode_resolution or None)
    t3 = guidance_term(cfg.guidance_3d, w["sds_3d"], step)
    if not (t2.weight or t3.weight):
        return {}
    res = guide(rgb.permute(0, 3, 1, 2), None, cams.elevation, cams.azimuth, cams.distance, t2, t3,
                multiview_tiles=multiview_tiles, generator=gen, cameras=cams)
    return {name: term.loss for name, term in res.terms.items()}


def make_optimizer(cfg: OptimConfig,
                   groups: dict[str, tuple[list[torch.nn.Parameter], float]]) -> torch.optim.Optimizer:
    """Adam / AdamW over named parameter groups ``{name: (params, lr)}`` (names kept in the groups)."""
    params = [{"params": p, "lr": lr, "name": name} for name, (p, lr) in groups.items() if p]
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
    return kind(params, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled`` (and supported); a no-op elsewhere, CPU included, so
    CPU results stay exact and bitwise resumable."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """PyTorch's deterministic kernels while a stage runs on CPU; the previous setting after it.

    With more than one thread, CPU ``index_put_(accumulate=True)`` (the backward of every ``x[idx]``
    gather: face vertices, edge ends, hash-table rows read by autograd) adds in thread order, so two
    runs of stage 2 on 2 threads drifted apart by 1e-5 in a few steps. The deterministic kernel sorts
    the indices first; ``benchmarks/bench_determinism.py`` measures what it costs. On CUDA nothing
    changes (only CPU results are promised bitwise)."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def stage_device(priors: Any) -> torch.device:
    """The device the run's priors live on (CPU when they say nothing)."""
    return torch.device(getattr(priors, "device", "cpu"))


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` (its state goes into the checkpoint)."""
    return torch.Generator(device=device).manual_seed(seed)


def seed_from_torch() -> int:
    """A seed drawn from torch's global RNG (seeded per stage by the runner), so a run's seed decides it."""
    return int(torch.randint(0, 2**62, (1,)).item())


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in pieces of ``size``."""
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))
