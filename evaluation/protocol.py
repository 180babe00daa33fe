"""The paper's evaluation protocol on an avatar (docs: GENEMAN.md, "Evaluation protocol").

120 views on a turntable (azimuth ``i * 360 / 120``, elevation 0, distance 3, fovy 20); view 0 is
the reference camera, the one stage 1 fits to the photo. Each view is the avatar's unlit albedo over
white (``Result.render``). Against the reference image (the preprocessed photo, see below):

- ``psnr_ref``: :func:`evaluation.metrics.psnr` of view 0 and the reference, over the whole image
  (white background included, as the peers' scripts compare whole images), data range 1;
  infinite when they are equal.
- ``lpips_ref``: :class:`priors.lpips.LPIPS` (VGG16, v0.1) of view 0 and the reference, both resized
  to :data:`LPIPS_SIZE` with an area filter, as the peers' ``LPIPSMeter`` does (their default
  network is AlexNet; this project's LPIPS is the VGG one).
- ``clip_per_view[i]``: cosine of the CLIP image embeddings (:mod:`priors.clip`) of view ``i`` and of
  the reference; ``clip_similarity`` is their mean.

The reference image is the photo as preprocess left it (recentred on the square canvas, white
background: ``Inputs.rgb``), resized to the render's resolution with the area filter by
:func:`stages.inputs.reference_maps`, exactly as the stages compare the reference camera's render
with it; so view 0 and the reference share one frame by construction.

Example:
    >>> cams = protocol_cameras()
    >>> len(cams), float(cams.azimuth[30]), float(cams.fovy[0]), float(cams.distance[0])
    (120, 90.0, 20.0, 3.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.metrics import psnr
from priors.clip import cosine
from stages.inputs import Inputs, reference_maps
from stages.render.cameras import Cameras, turntable
from stages.render.layout import to_channels_first

VIEWS, ELEVATION, DISTANCE, FOVY = 120, 0.0, 3.0, 20.0
"""The protocol's turntable: views, elevation (degrees), distance, vertical field of view (degrees)."""
LPIPS_SIZE = 224
"""Side both images are area-resized to before LPIPS (the peers' ``LPIPSMeter(size=224)``)."""
BATCH = 8
"""Views rendered (and embedded) at once."""


@dataclass
class Scores:
    """The protocol's numbers for one avatar."""

    psnr_ref: float
    """PSNR (dB) of the reference view against the reference image; ``math.inf`` when equal."""
    lpips_ref: float | None
    """LPIPS of the reference view against the reference image; None when not measured."""
    clip_per_view: list[float] | None
    """CLIP similarity of each view to the reference image, view 0 first; None when not measured."""

    @property
    def clip_similarity(self) -> float | None:
        """Mean of :attr:`clip_per_view` (the paper's CLIP-Sim)."""
        return None if self.clip_per_view is None else sum(self.clip_per_view) / len(self.clip_per_view)


def protocol_cameras() -> Cameras:
    """The 120 cameras of the protocol (view 0: the reference camera)."""
    return turntable(VIEWS, ELEVATION, DISTANCE, FOVY)


def reference_image(inputs: Inputs, resolution: int, device: torch.device | str = "cpu") -> Tensor:
    """[1, R, R, 3] the preprocessed photo at the render's resolution (area filter, as the stages use it)."""
    return reference_maps(inputs, resolution, device)["rgb"].clamp(0, 1)


def lpips_distance(lpips: Callable[[Tensor, Tensor], Tensor], a: Tensor, b: Tensor) -> float:
    """LPIPS of two [1, H, W, 3] images in [0, 1], each area-resized to :data:`LPIPS_SIZE` first."""
    def prep(x: Tensor) -> Tensor:
        return F.interpolate(to_channels_first(x).float(), (LPIPS_SIZE, LPIPS_SIZE), mode="area")

    return float(lpips(prep(a), prep(b))[0])


@torch.no_grad()
def evaluate(result: Any, reference: Tensor, resolution: int, clip: Callable[[Tensor], Tensor] | None = None,
             lpips: Callable[[Tensor, Tensor], Tensor] | None = None, cameras: Cameras | None = None,
             batch: int = BATCH, on_views: Callable[[int], None] | None = None) -> Scores:
    """Render ``result`` from the protocol's views and score the renders against ``reference``.

    Args:
        result: anything with ``render(cameras, height, width) -> {"rgb": [B, H, W, 3], ...}`` (the
            last stage's Result, on the device it renders on).
        reference: [1, R, R, 3] reference image in [0, 1] (:func:`reference_image`), R = ``resolution``.
        resolution: side of the square renders.
        clip: image encoder, [B, 3, H, W] in [0, 1] -> [B, D] embeddings (:class:`priors.clip.CLIPImageEncoder`);
            None: no CLIP similarity.
        lpips: [B, 3, H, W] pair -> [B] distances (:class:`priors.lpips.LPIPS`); None: no LPIPS.
        cameras: the views (default :func:`protocol_cameras`); view 0 is the reference view.
        batch: views rendered at once.
        on_views: called with the number of views done after each batch (progress).
    """
    assert reference.shape == (1, resolution, resolution, 3), f"reference {tuple(reference.shape)} vs {resolution}"
    cameras = protocol_cameras() if cameras is None else cameras
    ref_embedding = clip(to_channels_first(reference)) if clip is not None else None
    per_view, view0 = [], None
    for start in range(0, len(cameras), batch):
        rgb = result.render(cameras[start:start + batch], resolution, resolution)["rgb"].clamp(0, 1)
        if view0 is None:
            view0 = rgb[:1]
        if clip is not None:
            per_view += cosine(clip(to_channels_first(rgb)), ref_embedding).tolist()
        if on_views is not None:
            on_views(min(start + batch, len(cameras)))
    view0 = view0.to(reference.device)
    return Scores(psnr_ref=psnr(view0, reference),
                  lpips_ref=lpips_distance(lpips, view0, reference) if lpips is not None else None,
                  clip_per_view=per_view if clip is not None else None)


def finite_or_none(value: float | None) -> float | None:
    """``value`` for JSON: None for None, infinities and NaN (JSON has no number for them)."""
    return None if value is None or not math.isfinite(value) else value
