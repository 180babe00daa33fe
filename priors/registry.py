"""Load every prior once: a lazily-loading container a batch job keeps across avatars."""
from __future__ import annotations

from functools import cached_property
from typing import Any

import torch

from priors.adapted import AdaptedGuidance
from priors.config import Config
from priors.deferred import Deferred
from priors.hybrid import HybridSDS
from priors.lpips import LPIPS
from priors.prior_2d import StableDiffusionSDS
from priors.prior_3d import Zero123SDS
from priors.sapiens import SapiensEstimator, load_estimators
from priors.sdedit import ControlNetSDEdit
from priors.weights import STAGES, ensure_available


class PriorSet:
    """The frozen networks of a run, each loaded on first use and then kept.

    Args:
        cfg: the run's ``cfg.priors``.
        device: where the networks run.

    Example:
        >>> priors = PriorSet(Config(weights_dir="/weights"), "cpu")  # loads nothing yet
        >>> # priors.prior_2d  -> StableDiffusionSDS (SD 1.5 VAE/text encoder + GeneMAN 2D UNet)
    """

    def __init__(self, cfg: Config, device: torch.device | str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)

    def check(self, stages: list[str] | tuple[str, ...] = STAGES, run_cfg: Any = None) -> None:
        """Raise :class:`priors.weights.MissingWeightError` listing every weight the stages lack
        (with ``run_cfg``: less those of losses weighted 0 throughout)."""
        ensure_available(self.cfg, stages, run_cfg)

    @cached_property
    def prior_2d(self) -> StableDiffusionSDS:
        """GeneMAN 2D prior SDS (stages 1 and 3)."""
        return StableDiffusionSDS.from_pretrained(self.cfg, self.device)

    @cached_property
    def prior_3d(self) -> Zero123SDS:
        """GeneMAN 3D prior SDS (stages 1 and 3); call ``set_reference`` per avatar."""
        return Zero123SDS.from_pretrained(self.cfg, self.device)

    @cached_property
    def hybrid(self) -> HybridSDS:
        """2D + 3D prior SDS; each prior is loaded when its term is first used."""
        return HybridSDS(Deferred(lambda: self.prior_2d), Deferred(lambda: self.prior_3d))

    @cached_property
    def adapted(self) -> AdaptedGuidance:
        """Normal- and depth-adapted guidance (stage 2)."""
        return AdaptedGuidance.from_pretrained(self.cfg, self.device)

    @cached_property
    def sdedit(self) -> ControlNetSDEdit:
        """ControlNet SDEdit (stage 4)."""
        return ControlNetSDEdit.from_pretrained(self.cfg, self.device)

    @cached_property
    def sapiens(self) -> dict[str, SapiensEstimator | None]:
        """``{"normal": ..., "depth": ...}`` estimators (preprocess); ``None`` where allowed missing."""
        return load_estimators(self.cfg, self.device)

    @cached_property
    def lpips(self) -> LPIPS:
        """LPIPS (VGG16) perceptual distance (stage 2 on normal maps, stage 4 on edited views)."""
        return LPIPS.from_pretrained(self.cfg, self.device)

    def loaded(self) -> list[str]:
        """Names of the priors loaded so far."""
        names = ("prior_2d", "prior_3d", "hybrid", "adapted", "sdedit", "sapiens", "lpips")
        return [n for n in names if n in self.__dict__]
