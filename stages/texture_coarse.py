"""Stage 3, coarse texture: a texture field optimised in latent space under hybrid 2D + 3D SDS.

Only the typed configuration exists so far; the training loop lands with the stage's own issue,
and until then the runner stops before this stage with a message naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stages.common import GuidanceConfig, HashGridConfig, OptimConfig, OrbitCameraConfig
from stages.schedule import Ramp, ramp_field

FOLDER = "03_texture_coarse"


@dataclass
class Config:
    """Stage 3 hyperparameters (defaults: the release)."""

    steps: int = 2000
    """Optimisation steps."""
    resolution: int = 1024
    """Render resolution (square)."""
    encode_resolution: int = 512
    """Renders are resized to this before VAE encoding (0: encode at render size)."""
    n_ref: int = 2
    """Every ``n_ref``-th step is a reference-view step."""
    grid: HashGridConfig = field(default_factory=HashGridConfig)
    """Hash grid of the texture field (no progressive band)."""
    camera: OrbitCameraConfig = field(default_factory=OrbitCameraConfig)
    """Reference and random cameras."""
    guidance_2d: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        guidance_scale=20.0, min_t=Ramp(0.7, 0.2, 0, 200), max_t=Ramp(0.85, 0.5, 0, 200)))
    """2D prior SDS."""
    guidance_3d: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        guidance_scale=5.0, min_t=Ramp(0.7, 0.2, 0, 200), max_t=Ramp(0.85, 0.5, 0, 200)))
    """3D prior SDS."""
    multiview_tiles: int = 1
    """Views that share one noise sample and are tiled into one image per denoiser call (1: off)."""
    erode_px: int = 9
    """The reference RGB loss is taken inside the mask eroded by this many pixels."""
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Solid background colour."""
    lambda_sds: Ramp = ramp_field(0.1)
    """Weight of the 2D-prior SDS loss."""
    lambda_sds_3d: Ramp = ramp_field(0.3)
    """Weight of the 3D-prior SDS loss."""
    lambda_rgb: Ramp = ramp_field(1000.0)
    """Weight of the reference RGB L1 loss inside the eroded mask (the release's form)."""
    lambda_rgb_mse: Ramp = ramp_field(0.0)
    """Weight of the reference RGB MSE inside the eroded mask (the paper's form)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adamw", lr=0.01, lr_other=0.001, eps=1e-15))
    """Optimiser (``lr``: texture encoding, ``lr_other``: MLP and background)."""
    mixed_precision: bool = True
    """Autocast to half precision where the device supports it."""
