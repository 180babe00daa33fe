"""Stage 1, geometry initialisation: a NeRF fitted to the photo under hybrid 2D + 3D SDS.

Only the typed configuration exists so far; the training loop lands with the stage's own issue,
and until then the runner stops before this stage with a message naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stages.common import GuidanceConfig, HashGridConfig, OptimConfig, OrbitCameraConfig
from stages.schedule import Ramp, ramp_field

FOLDER = "01_geometry_init"


@dataclass
class Config:
    """Stage 1 hyperparameters (defaults: the release)."""

    steps: int = 5000
    """Optimisation steps."""
    resolutions: list[int] = field(default_factory=lambda: [128, 384])
    """Render resolution (square), one per phase of ``resolution_milestones``."""
    resolution_milestones: list[int] = field(default_factory=lambda: [3000])
    """Steps at which the render resolution moves to the next entry of ``resolutions``."""
    n_ref: int = 4
    """Every ``n_ref``-th step is a reference-view step; the others are novel-view guidance steps."""
    radius: float = 1.0
    """Radius of the bounding sphere of the field."""
    samples_per_ray: int = 512
    """Volume-rendering samples per ray."""
    normal_type: str = field(default="finite_difference", metadata={"choices": ("finite_difference", "analytic")})
    """Normals from the density gradient: ``finite_difference`` or ``analytic``."""
    density_blob_scale: float = 10.0
    """Scale of the initial density blob (Magic3D initialisation)."""
    density_blob_std: float = 0.5
    """Standard deviation of the initial density blob."""
    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(start_level=8, start_step=2000, update_steps=500))
    """Progressive hash grid of the density / albedo field."""
    camera: OrbitCameraConfig = field(default_factory=OrbitCameraConfig)
    """Reference and random cameras."""
    guidance_2d: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        guidance_scale=20.0, min_t=Ramp(0.7, 0.2, 0, 200), max_t=Ramp(0.85, 0.5, 0, 200)))
    """2D prior (GeneMAN 2D UNet) SDS."""
    guidance_3d: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        guidance_scale=5.0, min_t=Ramp(0.7, 0.2, 0, 200), max_t=Ramp(0.85, 0.5, 0, 200)))
    """3D prior (Zero-1-to-3 architecture) SDS."""
    depth_loss: str = field(default="ls_mse", metadata={"choices": ("ls_mse", "pearson")})
    """Reference depth loss: ``ls_mse`` (MSE after least-squares scale/shift) or ``pearson``."""
    lambda_sds: Ramp = ramp_field(0.1)
    """Weight of the 2D-prior SDS loss."""
    lambda_sds_3d: Ramp = ramp_field(0.3)
    """Weight of the 3D-prior SDS loss."""
    lambda_rgb: Ramp = ramp_field(1000.0)
    """Weight of the reference RGB MSE."""
    lambda_mask: Ramp = ramp_field(0.05)
    """Weight of the reference mask MSE."""
    lambda_depth: Ramp = ramp_field(10.0)
    """Weight of the reference depth loss (form chosen by ``depth_loss``)."""
    lambda_normal: Ramp = ramp_field(0.0)
    """Weight of the reference normal MSE against the Sapiens normal."""
    lambda_normal_smooth: Ramp = ramp_field(5.0)
    """Weight of the 2D normal-map smoothness."""
    lambda_3d_normal_smooth: Ramp = ramp_field(5.0, 2.0, 4000, 4001)
    """Weight of the 3D normal smoothness (perturbed-point normals)."""
    lambda_orient: Ramp = ramp_field(1.0, 10.0, 2000, 2001)
    """Weight of the orientation loss (normals facing away from the camera)."""
    lambda_sparsity: Ramp = ramp_field(0.1, 10.0, 2000, 2001)
    """Weight of the opacity sparsity loss."""
    lambda_opaque: Ramp = ramp_field(0.1, 10.0, 2000, 2001)
    """Weight of the binary-opacity loss."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=0.01, lr_other=0.01, eps=1e-8))
    """Optimiser."""
    mixed_precision: bool = True
    """Autocast the field and priors to half precision where the device supports it."""
    mesh_resolution: int = 256
    """Marching-cubes grid resolution for the NeRF -> mesh conversion at the end of the stage."""
