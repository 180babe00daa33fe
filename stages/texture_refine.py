"""Stage 4, texture refinement in pixel space: SDEdit-edited views (2D prior + ControlNet) fitted
by a UV texture map.

Only the typed configuration exists so far; the training loop lands with the stage's own issue,
and until then the runner stops before this stage with a message naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stages.common import GuidanceConfig, OptimConfig, OrbitCameraConfig
from stages.schedule import Ramp, ramp_field

FOLDER = "04_texture_refine"


@dataclass
class Config:
    """Stage 4 hyperparameters (defaults: the release)."""

    steps: int = 10000
    """Optimisation steps."""
    resolution: int = 1024
    """Render resolution (square)."""
    texture_size: int = 2048
    """Side of the UV texture map."""
    n_views: int = 120
    """Cached views around the subject that are edited and fitted."""
    edit_every: int = 30
    """Each cached view is re-edited every this many steps."""
    n_ref: int = 2
    """Every ``n_ref``-th step is a reference-view step."""
    camera: OrbitCameraConfig = field(default_factory=OrbitCameraConfig)
    """Reference camera and the view ring."""
    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        guidance_scale=7.5, min_t=Ramp(0.5, 0.5), max_t=Ramp(0.51, 0.51)))
    """SDEdit strength range (timestep fraction) and CFG scale of the 2D prior."""
    controlnet_scale: float = 1.0
    """Conditioning scale of the normal ControlNet."""
    ddim_stride: int = 25
    """SDEdit denoises from timestep t with t // ddim_stride DDIM steps."""
    lambda_l1: Ramp = ramp_field(1.0)
    """Weight of the L1 loss against the edited views."""
    lambda_mse: Ramp = ramp_field(0.0)
    """Weight of the MSE loss against the edited views."""
    lambda_lpips: Ramp = ramp_field(100.0)
    """Weight of the LPIPS (VGG) loss against the edited views."""
    lambda_rgb: Ramp = ramp_field(1000.0)
    """Weight of the reference RGB loss."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adamw", lr=0.01, lr_other=0.001, eps=1e-15))
    """Optimiser (``lr``: texture, ``lr_other``: background)."""
    mixed_precision: bool = True
    """Autocast the priors to half precision where the device supports it."""
