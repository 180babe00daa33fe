"""Stage 1, geometry initialisation: a NeRF fitted to the photo under hybrid 2D + 3D SDS.

A density + albedo field on the progressive hash grid is volume-rendered (occupancy grid, white
background). Every ``n_ref``-th step renders the reference camera and fits the photo, its mask and
the preprocess depth / normal maps; the other steps render random orbit cameras and take the hybrid
SDS of the run's guidance. The release's regularisers act on both. At the end the field becomes a
mesh by marching cubes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from stages import losses as L
from stages import previews
from stages.common import GuidanceConfig, HashGridConfig, OptimConfig, OrbitCameraConfig
from stages.inputs import Inputs, reference_maps
from stages.loop import (
    active,
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
from stages.render.fields import DensityField, density_normals
from stages.render.marching_cubes import evaluate_grid, marching_cubes
from stages.render.mesh_render import render_mesh
from stages.render.occupancy import OccupancyGrid
from stages.render.volume import render_image
from stages.schedule import Ramp, milestone_value, ramp_field

log = logging.getLogger("geneman")

FOLDER = "01_geometry_init"
NORMAL_LOSSES = ("normal", "normal_smooth", "3d_normal_smooth", "orient")
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
    density_blob_depth: float = 1.0
    """The initial blob's half-depth along the reference camera's axis, as a fraction of ``density_blob_std``
    (1: Magic3D's sphere). A person is far thinner front to back than tall; from a sphere the photo's mask
    carves only the outline, and the guidance must carve the depth of a slab as deep as the blob is wide."""
    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(
        start_level=8, start_step=2000, update_steps=500))
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
    """Weight of the reference mask's squared error, summed over the pixels (the release's form, a weight per
    pixel: at 128 px 0.05 weighs as 819 times a per-pixel mean)."""
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
    """Weight of the opacity sparsity loss (guidance views only)."""
    lambda_opaque: Ramp = ramp_field(0.1, 10.0, 2000, 2001)
    """Weight of the binary-opacity loss."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=0.01, lr_other=0.01, eps=1e-8))
    """Optimiser."""
    mixed_precision: bool = True
    """Autocast the field and priors to half precision where the device supports it."""
    mesh_resolution: int = 256
    """Marching-cubes grid resolution for the NeRF -> mesh conversion at the end of the stage."""
    mesh_level: float = 10.0
    """Density level of the marching-cubes surface (when ``mesh_level_search`` is empty)."""
    mesh_level_search: list[float] = field(default_factory=list)
    """Candidate density levels of the surface: the one whose mesh, seen from the reference camera, best
    matches the photo's mask (IoU) is used, and said in the log; empty: ``mesh_level``."""
    encode_resolution: int = 512
    """Renders are resized to this before the 2D prior's VAE encoding (0: encode at render size)."""
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Solid background colour (white, as the photo's background is painted)."""
    batch_size: int = 1
    """Random cameras per guidance step."""
    occupancy_resolution: int = 64
    """Cells per axis of the occupancy grid that skips empty space."""
    occupancy_every: int = 16
    """The occupancy grid is re-evaluated every this many steps."""
    mlp_neurons: int = 64
    """Hidden width of the density / albedo MLP."""
    smooth_points: int = 4096
    """Sample points per step for the 3D normal smoothness (a random subset of the rendered ones)."""
    smooth_eps: float = 0.01
    """Perturbation of the 3D normal smoothness points, scene units."""
    ray_chunk: int = 16384
    """Rays per field call (memory)."""
    preview_every: int = 500
    """A preview strip (reference view + three novel views) every this many steps (0: none)."""


class Result(MeshResult):
    """The fitted field (state and constructor arguments) and its marching-cubes mesh ``[V, 3]`` / ``[F, 3]``."""


def build_field(cfg: Config) -> DensityField:
    """The stage's density + albedo field from its config."""
    g = cfg.grid
    axis = blob_axis(cfg) if cfg.density_blob_depth != 1.0 else None
    return DensityField(cfg.radius, g.n_levels, g.features_per_level, g.log2_hashmap_size, g.base_resolution,
                        g.per_level_scale, g.start_level, g.start_step, g.update_steps, n_neurons=cfg.mlp_neurons,
                        blob_scale=cfg.density_blob_scale, blob_std=cfg.density_blob_std, blob_axis=axis,
                        blob_axis_ratio=cfg.density_blob_depth)


def blob_axis(cfg: Config) -> Tensor:
    """The unit [3] direction from the scene's centre to the reference camera (the photo's depth axis)."""
    c = cfg.camera
    eye = reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy).c2w[0, :3, 3]
    return (eye / eye.norm()).float()


def build_occupancy(cfg: Config) -> OccupancyGrid:
    """The stage's occupancy grid, its step the longest ray in the sphere's cube over the samples per ray."""
    return OccupancyGrid(cfg.radius, cfg.occupancy_resolution, 2 * cfg.radius * 1.7320508 / cfg.samples_per_ray)


def field_args(cfg: Config) -> dict:
    """What :func:`build_field` needs, as JSON (kept in the Result so it rebuilds without the config)."""
    return {"radius": cfg.radius, "grid": vars(cfg.grid).copy(), "mlp_neurons": cfg.mlp_neurons,
            "density_blob_scale": cfg.density_blob_scale, "density_blob_std": cfg.density_blob_std,
            **({"density_blob_depth": cfg.density_blob_depth, "density_blob_axis": blob_axis(cfg).tolist()}
               if cfg.density_blob_depth != 1.0 else {})}


@dataclass
class Reference:
    """The photo and its maps at one render resolution, ``[1, H, W, C]``, and the reference camera."""

    rgb: Tensor
    mask: Tensor
    depth: Tensor | None
    normal: Tensor | None
    camera: Cameras

    @classmethod
    def at(cls, inputs: Inputs, camera: Cameras, res: int, device: torch.device) -> "Reference":
        """The preprocess maps at ``res`` x ``res`` (:func:`stages.inputs.reference_maps`)."""
        m = reference_maps(inputs, res, device)
        return cls(m["rgb"], m["mask"], m["depth"], m["normal"], camera.to(device))


def reference_losses(out: dict[str, Tensor], ref: Reference, cfg: Config, w: dict[str, float]) -> dict[str, Tensor]:
    """RGB MSE and the mask's summed squared error (:func:`stages.losses.mask_sum`) against the photo; depth
    and normal against the preprocess maps where present."""
    losses = {"rgb": F.mse_loss(out["rgb"], ref.rgb), "mask": L.mask_sum(out["opacity"], ref.mask)}
    if ref.depth is not None and active(w, "depth"):
        depth = out["depth"] / out["opacity"].clamp_min(1e-4)
        fit = L.depth_pearson if cfg.depth_loss == "pearson" else L.depth_ls_mse
        losses["depth"] = fit(depth, ref.depth, ref.mask)
    if ref.normal is not None and active(w, "normal"):
        normal = L.to_camera(out["normal"], ref.camera.c2w)
        losses["normal"] = L.normal_mse(F.normalize(normal, dim=-1), ref.normal, ref.mask)
    return losses


def regularisers(field: DensityField, out: dict[str, Tensor], cfg: Config, w: dict[str, float],
                 gen: torch.Generator, is_ref: bool) -> dict[str, Tensor]:
    """The release's regularisers that are weighted now: normal smoothness (2D and 3D), orientation,
    sparsity (on guidance views only: against the photo it would thin what the photo shows) and binary
    opacity."""
    losses: dict[str, Tensor] = {}
    if active(w, "sparsity") and not is_ref:
        losses["sparsity"] = L.sparsity(out["opacity"])
    if active(w, "opaque"):
        losses["opaque"] = L.opaque(out["opacity"])
    if "normal" not in out:
        return losses
    if active(w, "normal_smooth"):
        losses["normal_smooth"] = L.normal_smoothness_2d(out["normal"], out["opacity"].detach())
    if active(w, "orient"):
        losses["orient"] = L.orientation(out["sample_weight"], out["sample_normal"], out["sample_dir"])
    if active(w, "3d_normal_smooth") and out["sample_point"].shape[0]:
        pts = out["sample_point"]
        pick = torch.randint(0, pts.shape[0], (min(cfg.smooth_points, pts.shape[0]),), generator=gen,
                             device=pts.device)
        p = pts[pick].detach()
        jitter = torch.randn(p.shape, generator=gen, device=p.device) * cfg.smooth_eps
        n0 = density_normals(field.density, p, cfg.normal_type)
        n1 = density_normals(field.density, p + jitter, cfg.normal_type)
        losses["3d_normal_smooth"] = L.normal_smoothness_3d(n0, n1)
    return losses


def render(field: DensityField, occ: OccupancyGrid, cams: Cameras, res: int, cfg: Config, normals: bool,
           gen: torch.Generator | None, perturb: bool = True) -> dict[str, Tensor]:
    """Volume-render ``res`` x ``res`` images ``[B, H, W, C]`` of the field from ``cams``."""
    bg = torch.tensor(cfg.background, dtype=torch.float32)
    return render_image(field, cams, res, res, chunk=cfg.ray_chunk, radius=cfg.radius,
                        n_samples=cfg.samples_per_ray, occupancy=occ, background=bg,
                        normals=cfg.normal_type if normals else None, perturb=perturb, generator=gen)


def guidance_cameras(cfg: Config, gen: torch.Generator) -> Cameras:
    """Random orbit cameras of a guidance step."""
    c = cfg.camera
    return sample_orbit(cfg.batch_size, c.elevation_range, c.azimuth_range, c.distance_range, c.fovy_range, gen)


def run(cfg: Config, inputs: Inputs, previous, priors, ckpt) -> Result:
    """Fit the field for ``cfg.steps`` steps (resuming from ``ckpt``) and convert it to a mesh."""
    device = stage_device(priors)
    c = cfg.camera
    ref_cam = reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy)
    field_ = build_field(cfg).to(device)
    occ = build_occupancy(cfg).to(device)
    opt = make_optimizer(cfg.optim, {"encoding": (list(field_.encoding.parameters()), cfg.optim.lr),
                                     "mlp": (list(field_.mlp.parameters()), cfg.optim.lr_other)})
    gen, cam_gen = generator(device, seed_from_torch()), generator(torch.device("cpu"), seed_from_torch())
    objects = {"field": field_, "occupancy": occ, "optim": opt, "gen": gen, "cam_gen": cam_gen}
    start = ckpt.resume(objects)
    guide = priors.hybrid
    photo = inputs.rgb.permute(2, 0, 1)[None].to(device)
    guide.prepare(inputs.prompt, inputs.negative_prompt, photo, c.ref_elevation, c.ref_azimuth, c.ref_distance)
    refs: dict[int, Reference] = {}
    for step in range(start, cfg.steps):
        # 1. schedules: band of the hash grid, loss weights, render resolution; occupancy refresh
        field_.set_step(step)
        w = weights_at(cfg, step)
        res = milestone_value(cfg.resolutions, cfg.resolution_milestones, step)
        if step % cfg.occupancy_every == 0:
            occ.update(field_.density, generator=gen, dilation=1)
        # 2. camera: the reference every n_ref-th step, random orbit cameras otherwise
        is_ref = step % cfg.n_ref == 0
        ref = refs.setdefault(res, Reference.at(inputs, ref_cam, res, device))
        cams = ref.camera if is_ref else guidance_cameras(cfg, cam_gen).to(device)
        with autocast(cfg.mixed_precision, device):
            # 3. render (normals only when a loss weighted now needs them)
            out = render(field_, occ, cams, res, cfg, active(w, *NORMAL_LOSSES), gen)
            # 4. losses: reference or guidance, then the regularisers
            losses = (reference_losses(out, ref, cfg, w) if is_ref
                      else hybrid_sds_losses(out["rgb"], cams, guide, cfg, w, step, gen))
            losses.update(regularisers(field_, out, cfg, w, gen, is_ref))
            loss = weighted_sum(losses, w)
        # 5. step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.preview_every and (step + 1) % cfg.preview_every == 0:
            previews.write(ckpt, step + 1, _preview(field_, occ, cfg, res, device))
        ckpt.step_done(step + 1, {k: v.detach() for k, v in losses.items()}, objects)
    field_.set_step(cfg.steps)
    verts, faces, colors, chosen = to_mesh(field_, cfg, device, ref_mask=inputs.mask, ref_camera=ref_cam)
    return Result(verts, faces, colors, state=field_.state_dict(), args={**field_args(cfg), "mesh_level": chosen})


@torch.no_grad()
def _preview(field_: DensityField, occ: OccupancyGrid, cfg: Config, res: int, device: torch.device) -> Tensor:
    out = render(field_, occ, previews.preview_cameras(cfg.camera).to(device), res, cfg, False, None, perturb=False)
    return out["rgb"]


def silhouette_iou(verts: Tensor, faces: Tensor, mask: Tensor, camera: Cameras) -> float:
    """IoU of a mesh's silhouette from ``camera`` with ``mask`` ``[H, W]`` (both thresholded at 0.5)."""
    h, w = mask.shape
    sil = render_mesh(verts, faces, camera.to(verts.device), h, w)["mask"][0, ..., 0].cpu() > 0.5
    ref = mask.cpu() > 0.5
    return float((sil & ref).sum()) / max(float((sil | ref).sum()), 1.0)


def choose_level(values: Tensor, cfg: Config, ref_mask: Tensor, ref_camera: Cameras
                 ) -> tuple[float, Tensor, Tensor, dict[str, float]]:
    """The mesh's density level and its marching-cubes mesh ``[V, 3]`` / ``[F, 3]`` from sampled densities
    ``values`` ``[R, R, R]``: ``cfg.mesh_level``, or with ``cfg.mesh_level_search`` the candidate whose
    reference-view silhouette has the highest IoU with ``ref_mask`` ``[H, W]`` (each candidate's IoU is
    returned last; empty without a search)."""
    if not cfg.mesh_level_search:
        return cfg.mesh_level, *marching_cubes(values, cfg.mesh_level, cfg.radius), {}
    ious, best = {}, None
    for level in cfg.mesh_level_search:
        verts, faces = marching_cubes(values, level, cfg.radius)
        ious[f"{level:g}"] = round(silhouette_iou(verts, faces, ref_mask, ref_camera), 4) if len(faces) else 0.0
        if best is None or ious[f"{level:g}"] > ious[f"{best[0]:g}"]:
            best = (level, verts, faces)
    log.info("geometry_init: mesh at density %g (reference-view IoU with the photo's mask %s)", best[0],
             ", ".join(f"{k}: {v:.3f}" for k, v in ious.items()))
    return *best, ious


@torch.no_grad()
def to_mesh(field_: DensityField, cfg: Config, device: torch.device, ref_mask: Tensor,
            ref_camera: Cameras) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Marching cubes of the density at the level :func:`choose_level` picks: vertices ``[V, 3]``, faces
    ``[F, 3]``, the albedo ``[V, 3]`` at the vertices, and ``{"level", "iou"}`` (the candidates' IoUs)."""
    values = evaluate_grid(field_.density, cfg.mesh_resolution, cfg.radius, device=device)
    level, verts, faces, ious = choose_level(values, cfg, ref_mask, ref_camera)
    if faces.shape[0] == 0:
        raise RuntimeError(f"the field has no surface at density {level:g}: nothing was fitted "
                           "(check the photo's mask and the loss weights)")
    colors = torch.cat([field_(v.to(device))[1].float().cpu() for v in verts.split(2**16)])
    return verts, faces, colors, {"level": level, "iou": ious}
