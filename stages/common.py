"""Config parts shared by several stages: hash grid, cameras, optimiser, guidance."""
from __future__ import annotations

from dataclasses import dataclass, field

from stages.schedule import Ramp, ramp_field


@dataclass
class HashGridConfig:
    """Multi-resolution hash-grid encoding (Instant-NGP) with the release's progressive band."""

    n_levels: int = 16
    """Number of resolution levels."""
    features_per_level: int = 2
    """Features stored per level."""
    log2_hashmap_size: int = 19
    """log2 of the table size per level."""
    base_resolution: int = 16
    """Grid resolution of the coarsest level."""
    per_level_scale: float = 1.447269237440378
    """Resolution growth factor between levels (1.4473 reaches 4096 at 16 levels)."""
    start_level: int = 16
    """Levels active at the start; ``n_levels`` disables the progressive band."""
    start_step: int = 0
    """Step at which more levels start to be added."""
    update_steps: int = 500
    """One more level is added every this many steps after ``start_step``."""


@dataclass
class OrbitCameraConfig:
    """Random orbit cameras for novel-view guidance and the fixed reference camera."""

    ref_elevation: float = 0.0
    """Elevation of the reference (input photo) camera, degrees."""
    ref_azimuth: float = 0.0
    """Azimuth of the reference camera, degrees."""
    ref_distance: float = 3.0
    """Distance of the reference camera from the origin."""
    ref_fovy: float = 20.0
    """Vertical field of view of the reference camera, degrees."""
    elevation_range: list[float] = field(default_factory=lambda: [-10.0, 45.0])
    """Random-camera elevation range, degrees."""
    azimuth_range: list[float] = field(default_factory=lambda: [-180.0, 180.0])
    """Random-camera azimuth range, degrees."""
    distance_range: list[float] = field(default_factory=lambda: [3.0, 3.0])
    """Random-camera distance range (full body)."""
    fovy_range: list[float] = field(default_factory=lambda: [20.0, 20.0])
    """Random-camera vertical field of view range, degrees."""


@dataclass
class PartCameraConfig:
    """Part-aware camera sampling around body-part centres (stage 2 of the release)."""

    enabled: bool = False
    """Sample cameras around the head / upper / lower body as well as the full body."""
    ratios: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.1, 0.1])
    """Probabilities of full body, head, upper body, lower body."""
    head_distance_range: list[float] = field(default_factory=lambda: [0.8, 1.0])
    """Camera distance range for head close-ups."""
    half_distance_range: list[float] = field(default_factory=lambda: [1.5, 2.0])
    """Camera distance range for upper / lower body views."""


@dataclass
class OptimConfig:
    """Adam / AdamW settings."""

    name: str = field(default="adam", metadata={"choices": ("adam", "adamw")})
    """Optimiser: ``adam`` or ``adamw``."""
    lr: float = 0.01
    """Learning rate of the main parameters (field / texture encoding)."""
    lr_other: float = 0.01
    """Learning rate of the other networks (MLP heads, background)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.0
    """Weight decay (AdamW)."""


@dataclass
class GuidanceConfig:
    """One diffusion guidance term: classifier-free guidance scale and timestep range schedules."""

    guidance_scale: float = 20.0
    """Classifier-free guidance scale."""
    min_t: Ramp = ramp_field(0.02)
    """Lower bound of sampled timesteps as a fraction of the training steps."""
    max_t: Ramp = ramp_field(0.98)
    """Upper bound of sampled timesteps as a fraction of the training steps."""
