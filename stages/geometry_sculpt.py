"""Stage 2, geometry sculpting: DMTet refined under normal- and depth-adapted diffusion guidance.

Only the typed configuration exists so far; the training loop lands with the stage's own issue,
and until then the runner stops before this stage with a message naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stages.common import GuidanceConfig, HashGridConfig, OptimConfig, OrbitCameraConfig, PartCameraConfig
from stages.schedule import Ramp, ramp_field

FOLDER = "02_geometry_sculpt"


@dataclass
class Config:
    """Stage 2 hyperparameters (defaults: the release)."""

    steps: int = 3000
    """Optimisation steps."""
    resolution: int = 512
    """Render resolution (square)."""
    tet_grid: int = 512
    """Marching-tetrahedra grid resolution."""
    n_ref: int = 2
    """Every ``n_ref``-th step is a reference-view step."""
    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(
        per_level_scale=1.381912879967776, start_level=8, start_step=250, update_steps=250))
    """Progressive hash grid of the SDF (1.3819 reaches 2048 at 16 levels)."""
    camera: OrbitCameraConfig = field(default_factory=lambda: OrbitCameraConfig(
        elevation_range=[-20.0, 20.0], distance_range=[3.0, 3.5], fovy_range=[20.0, 25.0]))
    """Reference and random full-body cameras."""
    parts: PartCameraConfig = field(default_factory=lambda: PartCameraConfig(enabled=True))
    """Part-aware zoomed cameras (head, upper, lower body)."""
    normal_guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        guidance_scale=30.0, min_t=Ramp(0.02, 0.02), max_t=Ramp(0.80, 0.21, 2000, 2001)))
    """Normal-adapted SD 1.5 SDS on rendered normal maps."""
    depth_guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        guidance_scale=30.0, min_t=Ramp(0.02, 0.02), max_t=Ramp(0.81, 0.11, 2000, 2001)))
    """Depth-adapted SD 1.5 SDS on rendered depth maps."""
    sdf_points: int = 100000
    """Points sampled per step for the SDF loss against the stage-1 mesh."""
    lambda_sds_normal: Ramp = ramp_field(1.0)
    """Weight of the normal-adapted SDS loss."""
    lambda_sds_depth: Ramp = ramp_field(1.0)
    """Weight of the depth-adapted SDS loss."""
    lambda_normal: Ramp = ramp_field(3000.0)
    """Weight of the reference normal loss (1 - cosine against the Sapiens normal; the release's form)."""
    lambda_normal_mse: Ramp = ramp_field(0.0)
    """Weight of the reference normal MSE against the Sapiens normal (the paper's form)."""
    lambda_normal_lpips: Ramp = ramp_field(100.0)
    """Weight of the perceptual (LPIPS) loss on reference normal maps."""
    lambda_mask: Ramp = ramp_field(1.0)
    """Weight of the reference silhouette MSE."""
    lambda_depth: Ramp = ramp_field(0.1)
    """Weight of the reference depth loss (MSE after least-squares scale/shift)."""
    lambda_sdf: Ramp = ramp_field(1500.0)
    """Weight of the SDF MSE against the stage-1 mesh."""
    lambda_normal_consistency: Ramp = ramp_field(0.0, 1000.0, 2000, 2001)
    """Weight of the mesh normal-consistency regulariser."""
    lambda_laplacian: Ramp = ramp_field(0.0, 5000.0, 2000, 2001)
    """Weight of the Laplacian smoothness regulariser."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adamw", lr=2e-5, lr_other=2e-5, eps=1e-15))
    """Optimiser."""
    mixed_precision: bool = False
    """The release runs this stage in fp32."""
