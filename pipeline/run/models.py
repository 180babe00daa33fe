"""The frozen networks of a run: device, the PriorSet, the weight check, Sapiens for preprocess."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, GenemanError
from priors.registry import PriorSet
from priors.weights import MissingWeightError, UntrustedWeightError, verify_code_weights

AUTO = "auto"


class MissingWeights(GenemanError):
    """Weights a run needs are not where they are looked for (one line per weight)."""

    exit_code = 2


class UntrustedWeights(GenemanError):
    """A weight file that is code (TorchScript) and not a released file; ``--trust-weights`` loads it."""

    exit_code = 2


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when visible, else CPU; a CUDA device that is not there is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use --device cpu")
    return device


def needed_by(cfg: RunConfig, stages: Sequence[Any]) -> list[str]:
    """Names (as ``priors.weights`` knows them) of what will run: preprocess and the built stages."""
    names = ["preprocess"] if cfg.preprocess.depth_normal else []
    return names + [s.name for s in stages if hasattr(s.module, "run")]


def check_weights(priors: PriorSet, cfg: RunConfig, stages: Sequence[Any]) -> None:
    """Stop before anything runs when a weight that will be needed is missing."""
    try:
        priors.check(needed_by(cfg, stages), cfg)
        verify_code_weights(priors.cfg, needed_by(cfg, stages), cfg)
    except MissingWeightError as e:
        raise MissingWeights(f"{e}\nsee `geneman weights check` (weights folder: --weights DIR "
                             "or priors.weights_dir; default: the Hugging Face cache)") from None
    except UntrustedWeightError as e:
        raise UntrustedWeights(str(e)) from None


def sapiens_depth_normal(priors: PriorSet) -> Callable:
    """Preprocess's depth/normal hook on top of the Sapiens estimators (loaded on first call)."""

    def estimate(rgb: np.ndarray, mask: np.ndarray):
        try:
            est = priors.sapiens
        except UntrustedWeightError as e:
            raise UntrustedWeights(str(e)) from None
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float().div(255).to(priors.device)
        m = torch.from_numpy(mask)[None, None].float().to(priors.device)
        depth = est["depth"](image, m)[0, 0].cpu().numpy() if est.get("depth") else None
        normal = est["normal"](image, m)[0].permute(1, 2, 0).cpu().numpy() if est.get("normal") else None
        return depth, normal

    return estimate


def prepare(cfg: RunConfig, stages: Sequence[Any], priors: Any = AUTO, depth_normal: Any = AUTO):
    """Resolve what a session runs with.

    Args:
        cfg: the run config.
        stages: the stage specs that will run.
        priors: ``AUTO`` builds a :class:`PriorSet` from ``cfg``; a PriorSet is used as given (a batch
            job keeps one across photos); anything else (tests: ``None``) is passed to the stages as is.
        depth_normal: ``AUTO``: Sapiens through the PriorSet when ``cfg.preprocess.depth_normal``.

    Returns:
        ``(priors, depth_normal)``; the weights are checked when ``priors`` is a PriorSet.
    """
    if priors == AUTO:
        priors = PriorSet(cfg.priors, resolve_device(cfg.device))
    if isinstance(priors, PriorSet):
        check_weights(priors, cfg, stages)
    if depth_normal == AUTO:
        wanted = isinstance(priors, PriorSet) and cfg.preprocess.depth_normal
        depth_normal = sapiens_depth_normal(priors) if wanted else None
    return priors, depth_normal
