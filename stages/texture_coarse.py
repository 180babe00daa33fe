"""Stage 3, coarse texture: a texture field on the fixed stage-2 mesh, optimised in latent space under
hybrid 2D + 3D SDS.

The field (hash grid + MLP, albedo in [0, 1]) is read at the surface points the rasteriser
interpolates per pixel. Every ``n_ref``-th step renders the reference view against the photo
inside its eroded mask; the others render random orbit views under the hybrid SDS of stage 1
(the 2D prior in latent space, renders resized to ``encode_resolution`` before encoding). With
``multiview_tiles`` > 1 (the paper's trick) each guidance step renders that many views, which share
one noise sample and go through the 2D prior as one tiled image.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stages import previews
from stages.common import GuidanceConfig, HashGridConfig, OptimConfig, OrbitCameraConfig
from stages.inputs import Inputs
from stages.loop import (
    autocast,
    generator,
    hybrid_sds_losses,
    make_optimizer,
    seed_from_torch,
    stage_device,
    weighted_sum,
    weights_at,
)
from stages.mesh_result import MeshResult
from stages.render.cameras import Cameras, reference_camera, sample_orbit
from stages.render.fields import AlbedoField
from stages.render.texture_render import field_shade, render_albedo
from stages.schedule import Ramp, ramp_field
from stages.texturing import ReferenceRGB, Surface, reference_rgb_losses

log = logging.getLogger("geneman")

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
    batch_size: int = 1
    """Tiled images per guidance step (each of ``multiview_tiles`` views; 1 view each without the trick)."""
    mlp_neurons: int = 64
    """Hidden width of the texture field's MLP."""
    preview_every: int = 500
    """A preview strip (reference view + three novel views) every this many steps (0: none)."""


class Result(MeshResult):
    """The stage-2 mesh, the texture field's albedo at its vertices, and the field's state and arguments."""

    def albedo_field(self) -> AlbedoField:
        """The trained texture field (on the CPU)."""
        field_ = AlbedoField(**self.args)
        field_.load_state_dict(self.state)
        return field_


def field_args(cfg: Config, surface: Surface) -> dict:
    """Constructor arguments of the texture field (its box holds the mesh)."""
    g = cfg.grid
    return {"radius": surface.box(), "n_levels": g.n_levels, "features_per_level": g.features_per_level,
            "log2_hashmap_size": g.log2_hashmap_size, "base_resolution": g.base_resolution,
            "per_level_scale": g.per_level_scale, "n_neurons": cfg.mlp_neurons}


def render(field_: AlbedoField, surface: Surface, cams: Cameras, res: int, cfg: Config) -> dict[str, Tensor]:
    """Albedo renders ``rgb`` [B, H, W, 3] over the background and ``mask`` [B, H, W, 1] from ``cams``."""
    shade = field_shade(field_, surface.verts, surface.faces)
    return render_albedo(surface.verts, surface.faces, cams, res, res, shade, surface.topology, cfg.background)


def guidance_cameras(cfg: Config, gen: torch.Generator) -> Cameras:
    """Random orbit cameras of a guidance step: ``batch_size`` x ``multiview_tiles`` views."""
    c = cfg.camera
    n = cfg.batch_size * max(cfg.multiview_tiles, 1)
    return sample_orbit(n, c.elevation_range, c.azimuth_range, c.distance_range, c.fovy_range, gen)


def run(cfg: Config, inputs: Inputs, previous, priors, ckpt) -> Result:
    """Fit the texture field on the stage-2 mesh for ``cfg.steps`` steps (resuming from ``ckpt``)."""
    device = stage_device(priors)
    c = cfg.camera
    ref_cam = reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy).to(device)
    surface = Surface.of(previous, device)
    args = field_args(cfg, surface)
    field_ = AlbedoField(**args).to(device)
    opt = make_optimizer(cfg.optim, {"encoding": (list(field_.encoding.parameters()), cfg.optim.lr),
                                     "mlp": (list(field_.mlp.parameters()), cfg.optim.lr_other)})
    gen, cam_gen = generator(device, seed_from_torch()), generator(torch.device("cpu"), seed_from_torch())
    objects = {"field": field_, "optim": opt, "gen": gen, "cam_gen": cam_gen}
    start = ckpt.resume(objects)
    guide = priors.hybrid
    photo = inputs.rgb.permute(2, 0, 1)[None].to(device)
    guide.prepare(inputs.prompt, inputs.negative_prompt, photo, c.ref_elevation, c.ref_azimuth, c.ref_distance)
    ref = ReferenceRGB.at(inputs, cfg.resolution, cfg.erode_px, device)
    for step in range(start, cfg.steps):
        # 1. loss weights at this step
        w = weights_at(cfg, step)
        # 2. camera: the reference every n_ref-th step, random orbit views otherwise
        is_ref = step % cfg.n_ref == 0
        cams = ref_cam if is_ref else guidance_cameras(cfg, cam_gen).to(device)
        with autocast(cfg.mixed_precision, device):
            # 3. render the field on the mesh
            out = render(field_, surface, cams, cfg.resolution, cfg)
            # 4. losses: the photo inside its eroded mask, or the hybrid SDS
            losses = (reference_rgb_losses(out["rgb"], ref, w) if is_ref
                      else hybrid_sds_losses(out["rgb"], cams, guide, cfg, w, step, gen,
                                           max(cfg.multiview_tiles, 1)))
        # 5. step (a guidance step whose terms are all weighted 0 now has nothing to optimise)
        if losses:
            opt.zero_grad(set_to_none=True)
            weighted_sum(losses, w).backward()
            opt.step()
        if cfg.preview_every and (step + 1) % cfg.preview_every == 0:
            previews.write(ckpt, step + 1, _preview(field_, surface, cfg, device))
        ckpt.step_done(step + 1, {k: v.detach() for k, v in losses.items()}, objects)
    with torch.no_grad():
        colors = torch.cat([field_(v).cpu() for v in surface.verts.split(2**16)])
    return Result(previous.verts.cpu(), previous.faces.cpu(), colors, state=field_.state_dict(), args=args)


@torch.no_grad()
def _preview(field_: AlbedoField, surface: Surface, cfg: Config, device: torch.device) -> Tensor:
    return render(field_, surface, previews.preview_cameras(cfg.camera).to(device), cfg.resolution, cfg)["rgb"]
