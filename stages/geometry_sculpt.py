"""Stage 2, geometry sculpting: DMTet refined under normal- and depth-adapted diffusion guidance.

An SDF and vertex offsets on a tetrahedral grid (hash grid + MLP) are first fitted to the stage-1
mesh. Each step extracts the surface by marching tetrahedra and rasterises its normal, depth and
mask: every ``n_ref``-th step from the reference camera against the preprocess maps, the others
from part-aware cameras (placed from the body landmarks) under the normal- and depth-adapted
guidance. Only the tets in a band around the stage-1 surface exist, so memory grows with the
surface, not the grid's volume.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages import losses as L
from stages import previews
from stages.common import GuidanceConfig, HashGridConfig, OptimConfig, OrbitCameraConfig, PartCameraConfig
from stages.inputs import Inputs, reference_maps
from stages.loop import (
    active,
    autocast,
    generator,
    guidance_term,
    make_optimizer,
    seed_from_torch,
    stage_device,
    weighted_sum,
    weights_at,
)
from stages.mesh_result import MeshResult
from stages.render.antialias import build_topology
from stages.render.cameras import Cameras, reference_camera, sample_orbit, sample_part_cameras
from stages.render.dmtet import band_cubes, band_grid, marching_tets_cubes
from stages.render.fields import MLP
from stages.render.hashgrid import HashGrid
from stages.render.layout import to_channels_first
from stages.render.mesh_render import render_mesh
from stages.render.mesh_sdf import MeshSDF
from stages.schedule import Ramp, ramp_field

log = logging.getLogger("geneman")

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
    """Weight of the reference silhouette's squared error, summed over the pixels (the release's form, a
    weight per pixel)."""
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
    bound: float = 1.0
    """The tet grid spans [-bound, bound]^3."""
    band: float = 4.0
    """Half-width, in grid cells, of the band of tets kept around the stage-1 surface."""
    init_steps: int = 1000
    """Adam steps fitting the SDF to the stage-1 mesh before sculpting (threestudio fits 1000)."""
    init_points: int = 20000
    """Points per fitting step (near the surface and in the band)."""
    init_lr: float = 0.001
    """Learning rate of the fit."""
    pool_points: int = 400000
    """Points (near the stage-1 surface) whose exact SDF is computed once, for the fit and the SDF loss."""
    mlp_neurons: int = 64
    """Hidden width of the SDF / deformation MLP."""
    deform_scale: float = 0.5
    """Largest vertex offset, in grid cells (tanh-bounded)."""
    batch_size: int = 1
    """Cameras per guidance step."""
    encode_resolution: int = 512
    """Renders are resized to this before the adapted models' VAE encoding (0: render size)."""
    preview_every: int = 500
    """A preview strip (reference view + three novel views, normals) every this many steps (0: none)."""


class Result(MeshResult):
    """The sculpted mesh ``[V, 3]`` / ``[F, 3]`` and the SDF network's state."""


class SDFNetwork(nn.Module):
    """SDF and vertex offset of tet-grid points: hash grid -> MLP (1 + 3 outputs).

    Args:
        cfg: the stage config (grid, widths, deformation bound).
        resolution: tet-grid cubes per axis (the offset is bounded by ``deform_scale`` cells).
    """

    def __init__(self, cfg: "Config", resolution: int):
        super().__init__()
        g = cfg.grid
        self.bound, self.cell = cfg.bound, 2 * cfg.bound / resolution
        self.deform_scale = cfg.deform_scale
        self.encoding = HashGrid(g.n_levels, g.features_per_level, g.log2_hashmap_size, g.base_resolution,
                                 g.per_level_scale, g.start_level, g.start_step, g.update_steps)
        self.mlp = MLP(self.encoding.out_dim, 4, cfg.mlp_neurons, 1)
        self.n_active: int | None = None

    def set_step(self, step: int) -> None:
        """Apply the progressive band of the hash grid at ``step``."""
        self.n_active = self.encoding.levels_at(step)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """SDF ``[N]`` (negative inside) and offset ``[N, 3]`` at points ``[N, 3]``."""
        out = self.mlp(self.encoding((x / self.bound + 1) / 2, self.n_active)).float()
        return out[:, 0], torch.tanh(out[:, 1:]) * (self.deform_scale * self.cell)


def fit_sdf(net: SDFNetwork, pool: tuple[Tensor, Tensor], cfg: "Config", gen: torch.Generator,
            check_stop: Callable[[], None] = lambda: None) -> Tensor:
    """Fit the network's SDF to the stage-1 mesh's (MSE; threestudio's ``initialize_shape``) on the point
    pool of :func:`sdf_pool`; returns the last loss. Offsets start at zero (not trained here).
    ``check_stop`` is called before each fitting step (``ckpt.check_stop``: a stop signal ends the fit at
    once instead of after its last step)."""
    net.set_step(10**9)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.init_lr)
    pool, sdf = pool[0].cpu(), pool[1].cpu()
    loss = torch.zeros(())
    for _ in range(cfg.init_steps):
        check_stop()
        pick = torch.randint(0, pool.shape[0], (min(cfg.init_points, pool.shape[0]),), generator=gen)
        pred, _ = net(pool[pick].to(_device(net)))
        loss = F.mse_loss(pred, sdf[pick].to(pred))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.detach()


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def part_centres(inputs: Inputs, cfg: "Config") -> Tensor | None:
    """Look-at points ``[4, 3]`` of full body, head, upper and lower body from the body landmarks,
    on the plane through the origin facing the reference camera; None without landmarks."""
    lm = inputs.landmarks
    if lm is None:
        return None
    c = cfg.camera
    half = c.ref_distance * torch.tan(torch.deg2rad(torch.tensor(c.ref_fovy / 2)))
    cam = reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy)
    right, up = cam.c2w[0, :3, 0], cam.c2w[0, :3, 1]

    def point(ids: list[int]) -> Tensor:
        sel = lm[ids]
        seen = sel[sel[:, 2] > 0.5] if (sel[:, 2] > 0.5).any() else sel
        x, y = seen[:, 0].mean(), seen[:, 1].mean()
        return right * (x - 0.5) * 2 * half + up * (0.5 - y) * 2 * half

    head, upper, lower = point(list(range(11))), point([11, 12, 23, 24]), point([23, 24, 25, 26, 27, 28])
    return torch.stack([torch.zeros(3), head, upper, lower])


def guidance_cameras(cfg: "Config", centres: Tensor | None, gen: torch.Generator) -> Cameras:
    """Part-aware cameras (full body alone without landmarks) of a guidance step."""
    c, p = cfg.camera, cfg.parts
    if p.enabled and centres is not None:
        cams, _ = sample_part_cameras(cfg.batch_size, centres, p.ratios, c.distance_range, p.head_distance_range,
                                      p.half_distance_range, c.fovy_range, c.elevation_range, c.azimuth_range, gen)
        return cams
    return sample_orbit(cfg.batch_size, c.elevation_range, c.azimuth_range, c.distance_range, c.fovy_range, gen)


@dataclass
class Grid:
    """The band of the tet grid: vertex positions ``[V, 3]`` and each band cube's corner ids ``[C, 8]``
    (6 tets a cube)."""

    verts: Tensor
    cubes: Tensor

    @classmethod
    def around(cls, target: MeshSDF, cfg: "Config", device: torch.device) -> "Grid":
        """Tets within ``cfg.band`` cells of the stage-1 surface."""
        coarse = cfg.tet_grid
        while coarse > 16 and coarse % 2 == 0:
            coarse //= 2
        cell = 2 * cfg.bound / cfg.tet_grid
        margin = target.spacing() / cell  # unsigned() overestimates by up to the sample spacing
        cubes = band_cubes(target.unsigned, cfg.tet_grid, cfg.bound, cfg.band + margin, coarse)
        verts, corners = band_grid(cubes, cfg.tet_grid, cfg.bound)
        return cls(verts.to(device), corners.to(device))


def extract(net: SDFNetwork, grid: Grid) -> tuple[Tensor, Tensor, Tensor]:
    """Marching tets of the network's SDF on the deformed band: mesh ``[M, 3]``, ``[K, 3]`` and the SDF ``[V]``."""
    sdf, offset = net(grid.verts)
    verts, faces = marching_tets_cubes(grid.verts + offset, grid.cubes, sdf)
    return verts, faces, sdf


def reference_losses(out: dict[str, Tensor], ref: dict[str, Tensor | None], cam: Cameras, cfg: "Config",
                     w: dict[str, float], priors) -> dict[str, Tensor]:
    """Normal (1 - cos and / or MSE, LPIPS), the mask's summed squared error (:func:`stages.losses.mask_sum`)
    and depth against the preprocess maps."""
    losses = {"mask": L.mask_sum(out["mask"], ref["mask"])}
    if ref["normal"] is not None:
        normal = L.to_camera(out["normal"], cam.c2w)
        if active(w, "normal"):
            losses["normal"] = L.normal_cosine(normal, ref["normal"], ref["mask"])
        if active(w, "normal_mse"):
            losses["normal_mse"] = L.normal_mse(normal, ref["normal"], ref["mask"])
        if active(w, "normal_lpips"):
            img = lambda n, m: to_channels_first(m * (n * 0.5 + 0.5))  # noqa: E731 - the normal image
            losses["normal_lpips"] = priors.lpips(img(normal, out["mask"]), img(ref["normal"], ref["mask"])).mean()
    if ref["depth"] is not None and active(w, "depth"):
        losses["depth"] = L.depth_ls_mse(out["depth"], ref["depth"], ref["mask"])
    return losses


def guidance_losses(out: dict[str, Tensor], cams: Cameras, guide, cfg: "Config", w: dict[str, float], step: int,
                    gen: torch.Generator) -> dict[str, Tensor]:
    """Normal- and depth-adapted SDS of the rendered normal and depth maps."""
    size = cfg.encode_resolution or None
    mask = to_channels_first(out["mask"])
    losses = {}
    if active(w, "sds_normal"):
        t = guidance_term(cfg.normal_guidance, w["sds_normal"], step)
        normal = to_channels_first(L.to_camera(out["normal"], cams.c2w))
        losses["sds_normal"] = guide.normal_sds(normal, mask, None, t.t_range, t.guidance_scale, size, gen,
                                                cameras=cams).loss
    if active(w, "sds_depth"):
        t = guidance_term(cfg.depth_guidance, w["sds_depth"], step)
        losses["sds_depth"] = guide.depth_sds(to_channels_first(out["depth"]), mask, None, t.t_range,
                                              t.guidance_scale, size, gen, cameras=cams).loss
    return losses


def regularisers(net: SDFNetwork, verts: Tensor, faces: Tensor, topo, sdf_pool: tuple[Tensor, Tensor],
                 cfg: "Config", w: dict[str, float], gen: torch.Generator) -> dict[str, Tensor]:
    """SDF MSE against the stage-1 mesh on a random subset of a fixed point pool; normal consistency
    and Laplacian smoothness of the extracted mesh."""
    losses = {}
    if active(w, "sdf"):
        pts, target = sdf_pool
        pick = torch.randint(0, pts.shape[0], (min(cfg.sdf_points, pts.shape[0]),), generator=gen, device=pts.device)
        pred, _ = net(pts[pick])
        losses["sdf"] = F.mse_loss(pred, target[pick])
    if active(w, "normal_consistency"):
        losses["normal_consistency"] = L.normal_consistency(verts, faces, topo.edge_faces)
    if active(w, "laplacian"):
        losses["laplacian"] = L.laplacian(verts, L.mesh_edges(faces))
    return losses


def sdf_pool(target: MeshSDF, grid: Grid, cfg: Config, gen: torch.Generator,
             device: torch.device) -> tuple[Tensor, Tensor]:
    """Fixed points (band vertices, half of them jittered within a cell; at most ``pool_points``) and
    the stage-1 mesh's exact SDF there: the targets of the initial fit and of the SDF loss."""
    cell = 2 * cfg.bound / cfg.tet_grid
    v = grid.verts.cpu()
    if v.shape[0] > cfg.pool_points // 2:
        v = v[torch.randperm(v.shape[0], generator=gen)[: cfg.pool_points // 2]]
    pts = torch.cat([v, v + (torch.rand(v.shape, generator=gen) - 0.5) * cell])
    return pts.to(device), target(pts).to(device)


def _render(verts: Tensor, faces: Tensor, cams: Cameras, res: int, topo) -> dict[str, Tensor]:
    return render_mesh(verts, faces, cams, res, res, topology=topo)


def run(cfg: Config, inputs: Inputs, previous, priors, ckpt) -> Result:
    """Sculpt the stage-1 mesh for ``cfg.steps`` steps (resuming from ``ckpt``)."""
    device = stage_device(priors)
    c = cfg.camera
    ref_cam = reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy).to(device)
    target = MeshSDF(previous.verts, previous.faces)
    grid = Grid.around(target, cfg, device)
    net = SDFNetwork(cfg, cfg.tet_grid).to(device)
    init_gen = generator(torch.device("cpu"), seed_from_torch())
    pool = sdf_pool(target, grid, cfg, init_gen, device)
    opt = make_optimizer(cfg.optim, {"encoding": (list(net.encoding.parameters()), cfg.optim.lr),
                                     "mlp": (list(net.mlp.parameters()), cfg.optim.lr_other)})
    gen, cam_gen = generator(device, seed_from_torch()), generator(torch.device("cpu"), seed_from_torch())
    objects = {"sdf": net, "optim": opt, "gen": gen, "cam_gen": cam_gen}
    start = ckpt.resume(objects)
    if start == 0:
        log.info("geometry_sculpt: %d tets in a %.0f-cell band of the %d^3 grid; fitting the SDF to the stage-1 mesh",
                 6 * grid.cubes.shape[0], cfg.band, cfg.tet_grid)
        fit_sdf(net, pool, cfg, init_gen, ckpt.check_stop)
    centres = part_centres(inputs, cfg)
    if centres is None and cfg.parts.enabled:
        log.warning("geometry_sculpt: no body landmarks; guidance cameras are full-body only (no head / upper / "
                    "lower body close-ups)")
    guide = priors.adapted
    guide.prepare(inputs.prompt, inputs.negative_prompt)
    ref = reference_maps(inputs, cfg.resolution, device)
    for step in range(start, cfg.steps):
        # 1. schedules: hash-grid band and loss weights
        net.set_step(step)
        w = weights_at(cfg, step)
        # 2. surface: marching tets on the deformed band
        verts, faces, _ = extract(net, grid)
        topo = build_topology(faces)
        # 3. camera: the reference every n_ref-th step, part-aware cameras otherwise; rasterise
        is_ref = step % cfg.n_ref == 0
        cams = ref_cam if is_ref else guidance_cameras(cfg, centres, cam_gen).to(device)
        with autocast(cfg.mixed_precision, device):
            out = _render(verts, faces, cams, cfg.resolution, topo)
            # 4. losses: reference or guidance, then the regularisers
            losses = (reference_losses(out, ref, cams, cfg, w, priors) if is_ref
                      else guidance_losses(out, cams, guide, cfg, w, step, gen))
            losses.update(regularisers(net, verts, faces, topo, pool, cfg, w, gen))
            loss = weighted_sum(losses, w)
        # 5. step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.preview_every and (step + 1) % cfg.preview_every == 0:
            previews.write(ckpt, step + 1, _preview(net, grid, cfg, device))
        ckpt.step_done(step + 1, {k: v.detach() for k, v in losses.items()}, objects)
    net.set_step(cfg.steps)
    with torch.no_grad():
        verts, faces, _ = extract(net, grid)
    if faces.shape[0] == 0:
        raise RuntimeError("the sculpted SDF has no surface left (check the loss weights)")
    return Result(verts.cpu(), faces.cpu(), state=net.state_dict(), args={"tet_grid": cfg.tet_grid})


@torch.no_grad()
def _preview(net: SDFNetwork, grid: Grid, cfg: Config, device: torch.device) -> Tensor:
    verts, faces, _ = extract(net, grid)
    cams = previews.preview_cameras(cfg.camera).to(device)
    out = _render(verts, faces, cams, cfg.resolution, build_topology(faces))
    cam_normal = L.to_camera(out["normal"], cams.c2w)
    return out["mask"] * (cam_normal * 0.5 + 0.5) + (1 - out["mask"])
