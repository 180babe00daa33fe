"""The benchmark's oracle guidance: answers the guidance calls the stages make with a loss that pulls
each render towards the ground truth's render at the same camera.

It stands where the run's priors stand (``priors.hybrid``, ``priors.adapted``, ``priors.sdedit``), so ``geneman bench``
drives exactly the stage code of ``geneman run``; it measures the machinery (fields, renderers,
schedules, optimisers, hand-offs) apart from what the diffusion priors know.

Each answer is ``scale * mean squared difference`` in the space the real prior sees: the RGB render
for the hybrid SDS, the normal image (camera-space normals, masked) and the depth for the adapted
guidance. The scales put one guidance view on a par with one reference view under each preset's
loss weights (see :class:`OracleConfig`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from priors.adapted import normal_image
from priors.hybrid import HybridOutput, Term
from priors.weights import MissingWeightError

Truth = Callable[..., dict[str, Tensor]]
"""``truth(cameras, height, width) -> {"rgb", "mask", "depth", "normal"}`` maps ``[B, H, W, C]``:
unlit albedo on white, coverage, distance along each pixel's ray, unit camera-space normals
(:class:`evaluation.truth.SubjectRenderer`)."""


@dataclass
class OracleConfig:
    """Loss scales of the oracle's answers."""

    rgb_scale: float = 2500.0
    """Hybrid SDS answer: this times the RGB MSE (0.4 x 2500 = the release's reference weight 1000)."""
    normal_scale: float = 20000.0
    """Normal-adapted answer: this times the MSE of the normal images (about the release's 3000 x (1 - cos)
    on the reference view, as the image MSE is about (1 - cos) / 2 times the covered fraction)."""
    depth_scale: float = 1000.0
    """Depth-adapted answer: this times the MSE of depth where both cover, plus the mask MSE."""


@dataclass
class OracleTerm:
    """One answered term (the stages read ``loss``; the real priors' :class:`priors.sds.SDSOutput` has more)."""

    loss: Tensor


def _bhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


class OracleHybrid:
    """Stands for :class:`priors.hybrid.HybridSDS`: both terms answered with the RGB MSE to the truth."""

    def __init__(self, truth: Truth, cfg: OracleConfig):
        self.truth, self.cfg = truth, cfg
        self.calls = 0

    def prepare(self, prompt: str, negative_prompt: str, reference: Tensor, elevation: float, azimuth: float,
                distance: float) -> None:
        """Nothing to set: the truth knows the subject."""

    def __call__(self, images: Tensor, embeddings, elevation: Tensor, azimuth: Tensor, distance: Tensor,
                 term_2d: Term, term_3d: Term, multiview_tiles: int = 1, generator=None, cameras=None) -> HybridOutput:
        """``images`` ``[B, 3, H, W]`` rendered from ``cameras``; each weighted term gets the same MSE."""
        if cameras is None:
            raise ValueError("the oracle guidance needs the render cameras (cameras=...)")
        self.calls += 1
        gt = self.truth(cameras, images.shape[2], images.shape[3])["rgb"].to(images)
        mse = F.mse_loss(_bhwc(images), gt)
        terms = {name: OracleTerm(self.cfg.rgb_scale * mse) for name, term in (("sds", term_2d), ("sds_3d", term_3d))
                 if term.weight}
        loss = sum((term.weight * terms[n].loss for n, term in (("sds", term_2d), ("sds_3d", term_3d)) if term.weight),
                   images.new_zeros(()))
        return HybridOutput(loss, terms)


class OracleAdapted:
    """Stands for :class:`priors.adapted.AdaptedGuidance`: normal and depth answers from the truth."""

    def __init__(self, truth: Truth, cfg: OracleConfig):
        self.truth, self.cfg = truth, cfg

    def prepare(self, prompt: str, negative_prompt: str = "") -> None:
        """Nothing to set."""

    def _truth(self, cameras, like: Tensor) -> dict[str, Tensor]:
        if cameras is None:
            raise ValueError("the oracle guidance needs the render cameras (cameras=...)")
        return {k: v.to(like) for k, v in self.truth(cameras, like.shape[2], like.shape[3]).items()}

    def normal_sds(self, normal: Tensor, mask: Tensor, embeddings, t_range, guidance_scale: float,
                   encode_size=None, generator=None, cameras=None) -> OracleTerm:
        """MSE between the normal images (camera-space ``[B, 3, H, W]`` normals, ``[B, 1, H, W]`` mask)."""
        gt = self._truth(cameras, normal)
        gt_img = normal_image(gt["normal"].permute(0, 3, 1, 2), gt["mask"].permute(0, 3, 1, 2))
        return OracleTerm(self.cfg.normal_scale * F.mse_loss(normal_image(normal, mask), gt_img))

    def depth_sds(self, depth: Tensor, mask: Tensor, embeddings, t_range, guidance_scale: float,
                  encode_size=None, generator=None, cameras=None) -> OracleTerm:
        """Depth MSE where both the render and the truth cover, plus the mask MSE (``[B, 1, H, W]`` each)."""
        gt = self._truth(cameras, depth)
        gt_depth, gt_mask = gt["depth"].permute(0, 3, 1, 2), gt["mask"].permute(0, 3, 1, 2)
        both = (gt_mask > 0.5) & (mask.detach() > 0.5)
        err = ((depth - gt_depth) ** 2 * both).sum() / both.sum().clamp_min(1)
        return OracleTerm(self.cfg.depth_scale * (err + F.mse_loss(mask, gt_mask)))


class OracleSDEdit:
    """Stands for :class:`priors.sdedit.ControlNetSDEdit`: the "edit" of a render is the truth's albedo
    render at the same camera (what a perfect editor would return)."""

    def __init__(self, truth: Truth):
        self.truth = truth
        self.calls = 0

    def prepare(self, prompt: str, negative_prompt: str = "") -> None:
        """Nothing to set."""

    def __call__(self, images: Tensor, control: Tensor, embeddings, strength: float, num_inference_steps: int,
                 guidance_scale: float = 7.5, conditioning_scale: float = 1.0, size=None, generator=None,
                 cameras=None) -> Tensor:
        """The truth's ``[B, 3, H, W]`` albedo on white at ``cameras``, the size of ``images``."""
        if cameras is None:
            raise ValueError("the oracle guidance needs the render cameras (cameras=...)")
        self.calls += 1
        return self.truth(cameras, images.shape[2], images.shape[3])["rgb"].permute(0, 3, 1, 2).to(images)


class OraclePriors:
    """What the runner hands the stages as ``priors`` in a benchmark: the oracle in place of each guidance.

    Args:
        truth: the ground-truth renderer of the subject.
        cfg: loss scales.
        device: where the stages run.
    """

    def __init__(self, truth: Truth, cfg: OracleConfig | None = None, device: torch.device | str = "cpu",
                 lpips: Callable[[], torch.nn.Module] | None = None):
        cfg = cfg or OracleConfig()
        self.device = torch.device(device)
        self.hybrid = OracleHybrid(truth, cfg)
        self.adapted = OracleAdapted(truth, cfg)
        self.sdedit = OracleSDEdit(truth)
        self._lpips_loader, self._lpips = lpips, None

    @property
    def lpips(self) -> torch.nn.Module:
        """LPIPS is a loss, not a prior: the real network when the benchmark was given a loader for it.

        Raises:
            priors.weights.MissingWeightError: no loader (or the loader's own error: weights missing).
        """
        if self._lpips is None:
            if self._lpips_loader is None:
                raise MissingWeightError("lpips: no LPIPS weights given to the benchmark")
            self._lpips = self._lpips_loader()
        return self._lpips

    def check(self, *args, **kwargs) -> None:
        """No weights to check."""

    def loaded(self) -> list[str]:
        """The oracle loads no networks."""
        return []
