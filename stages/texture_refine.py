"""Stage 4, texture refinement in pixel space: a UV texture map fitted to SDEdit edits (2D prior +
normal ControlNet) of rendered views, and to the photo.

The stage-2 mesh is UV-unwrapped (xatlas in a child process with a timeout; the fallback atlas when
it crashes or times out, said once in the log) and the stage-3 texture field is baked into the map.
A ring of ``n_views`` cameras is cached with an edit of each: a view is edited the first time it
is visited, and re-edited (from the current texture) once its edit is ``n_views * edit_every``
steps old, so one view is refreshed every ``edit_every`` steps on average (release: 120 views, one
re-edit every 30 steps). Guidance steps visit the views in turn and fit the render to the cached
edit (L1 / MSE + LPIPS when its weights are there); every ``n_ref``-th step fits the reference view
to the photo inside its eroded mask. The cache is part of the checkpoint.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priors.adapted import normal_image
from priors.weights import MissingWeightError
from stages import losses as L
from stages import previews
from stages.common import GuidanceConfig, OptimConfig, OrbitCameraConfig
from stages.inputs import Inputs
from stages.loop import (
    active,
    autocast,
    ever_active,
    generator,
    make_optimizer,
    seed_from_torch,
    stage_device,
    weighted_sum,
    weights_at,
)
from stages.render.cameras import Cameras, orbit_cameras, reference_camera
from stages.render.interpolate import interpolate
from stages.render.layout import to_channels_first, to_channels_last
from stages.render.mesh_render import render_mesh
from stages.render.texture_render import render_albedo, texture_shade
from stages.render.uv import pad_texture, rasterize_uv, unwrap_uv
from stages.schedule import Ramp, ramp_field, ramp_value
from stages.textured_mesh import TexturedMesh
from stages.texturing import ReferenceRGB, Surface, reference_rgb_losses, require_faces

log = logging.getLogger("geneman")

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
    """Cached views on a ring around the subject, each with its SDEdit edit."""
    edit_every: int = 30
    """One cached view is re-edited every this many steps on average (each view once its edit is
    ``n_views * edit_every`` steps old)."""
    n_ref: int = 2
    """Every ``n_ref``-th step is a reference-view step."""
    camera: OrbitCameraConfig = field(default_factory=OrbitCameraConfig)
    """Reference camera; the view ring spans ``elevation_range`` at the reference distance and fovy."""
    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        guidance_scale=7.5, min_t=Ramp(0.5, 0.5), max_t=Ramp(0.51, 0.51)))
    """SDEdit strength range (timestep fraction) and CFG scale of the 2D prior."""
    controlnet_scale: float = 1.0
    """Conditioning scale of the normal ControlNet."""
    ddim_stride: int = 25
    """SDEdit denoises from timestep t with t // ddim_stride DDIM steps."""
    encode_resolution: int = 512
    """Views are resized to this before SDEdit encodes them (0: the render size)."""
    erode_px: int = 9
    """The reference RGB loss is taken inside the mask eroded by this many pixels."""
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Solid background colour."""
    xatlas: bool = True
    """Unwrap with xatlas (in a child process); False: the fallback atlas straight away."""
    xatlas_timeout: float = 600.0
    """Seconds xatlas may take before the fallback atlas is used."""
    pad_px: int = 8
    """Texels the baked texture is grown across UV seams."""
    lambda_l1: Ramp = ramp_field(1.0)
    """Weight of the L1 loss against the edited views."""
    lambda_mse: Ramp = ramp_field(0.0)
    """Weight of the MSE loss against the edited views."""
    lambda_lpips: Ramp = ramp_field(100.0)
    """Weight of the LPIPS (VGG) loss against the edited views (skipped, said once, without its weights)."""
    lambda_rgb: Ramp = ramp_field(1000.0)
    """Weight of the reference RGB L1 loss inside the eroded mask."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adamw", lr=0.01, lr_other=0.001, eps=1e-15))
    """Optimiser (``lr``: the texture map)."""
    mixed_precision: bool = True
    """Autocast the priors to half precision where the device supports it."""
    preview_every: int = 2000
    """A preview strip (reference view + three novel views) every this many steps (0: none)."""


class Result(TexturedMesh):
    """The avatar: the stage-2 mesh, its UV atlas and the refined texture map."""


class Atlas(nn.Module):
    """The UV atlas of the mesh (buffers, so that it is part of the checkpoint) and the texture map.

    Args:
        vmapping: [U] mesh vertex of each UV vertex.
        uvs: [U, 2] texture coordinates.
        uv_faces: [F, 3] triangles over the UV vertices.
        texture: [T, T, 3] initial albedo (the parameter optimised).
    """

    def __init__(self, vmapping: Tensor, uvs: Tensor, uv_faces: Tensor, texture: Tensor):
        super().__init__()
        self.register_buffer("vmapping", vmapping.long())
        self.register_buffer("uvs", uvs.float())
        self.register_buffer("uv_faces", uv_faces.long())
        self.texture = nn.Parameter(texture.float().clone())

    def faces(self) -> Tensor:
        """[F, 3] the atlas' triangles over the mesh vertices."""
        return self.vmapping[self.uv_faces]

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """Take the checkpoint's atlas whatever its size (an unwrap need not repeat itself exactly); the
        texture is copied in place, so the optimiser keeps its parameter."""
        for name in ("vmapping", "uvs", "uv_faces"):
            setattr(self, name, state[name].to(getattr(self, name)))
        with torch.no_grad():
            self.texture.copy_(state["texture"])

    def result(self, verts: Tensor) -> Result:
        return Result(verts.detach().cpu(), self.vmapping.cpu(), self.uvs.cpu(), self.uv_faces.cpu(),
                      self.texture.detach().clamp(0, 1).cpu())


def unwrap(verts: Tensor, faces: Tensor, cfg: Config) -> tuple[Tensor, Tensor, Tensor]:
    """UV atlas ``(vmapping, uvs, uv_faces)`` of the mesh, on the device of ``verts``; the fallback is said
    once in the log."""
    uv = unwrap_uv(verts.cpu(), faces.cpu(), timeout=cfg.xatlas_timeout, use_xatlas=cfg.xatlas)
    if cfg.xatlas and uv.method != "xatlas":
        log.warning("texture_refine: %s on the %d-face mesh; using the fallback atlas (one cell per triangle "
                    "pair: more seams, fewer texels per triangle)", uv.note or "xatlas failed", faces.shape[0])
    return uv.vmapping.to(verts.device), uv.uvs.to(verts.device), uv.faces.to(verts.device)


@torch.no_grad()
def bake(previous, verts: Tensor, vmapping: Tensor, uvs: Tensor, uv_faces: Tensor, cfg: Config) -> Tensor:
    """The stage-3 texture field at every texel's surface point: ``[T, T, 3]``, grown across seams."""
    albedo = previous.albedo_field().to(verts.device)
    rast = rasterize_uv(uvs, uv_faces, cfg.texture_size)
    world = interpolate(verts[vmapping], rast, uv_faces)[0]
    covered = rast[0, ..., 3] > 0
    texture = torch.zeros(cfg.texture_size, cfg.texture_size, 3, device=verts.device)
    points = world[covered]
    if points.shape[0]:
        texture[covered] = torch.cat([albedo(p) for p in points.split(2**16)])
    return pad_texture(texture, covered, cfg.pad_px)


class ViewCache(nn.Module):
    """The ring of cached views and their edits (buffers: part of the checkpoint).

    Args:
        cfg: the stage config (ring size, camera, resolution).
        gen: CPU generator for the views' elevations.
    """

    def __init__(self, cfg: Config, gen: torch.Generator):
        super().__init__()
        c, n = cfg.camera, cfg.n_views
        lo, hi = c.elevation_range
        self.register_buffer("elevation", lo + (hi - lo) * torch.rand(n, generator=gen))
        self.register_buffer("azimuth", c.ref_azimuth + torch.arange(n, dtype=torch.float32) * (360.0 / n))
        self.register_buffer("images", torch.zeros(n, cfg.resolution, cfg.resolution, 3))
        self.register_buffer("edited_at", torch.full((n,), -1, dtype=torch.long))
        self.distance, self.fovy, self.max_age = c.ref_distance, c.ref_fovy, n * cfg.edit_every

    def view_at(self, step: int, n_ref: int) -> int:
        """The view a guidance step visits: the ring in turn."""
        return (step // n_ref) % self.images.shape[0]

    def cameras(self, view: int) -> Cameras:
        ones = torch.ones(1)
        return orbit_cameras(self.elevation[view:view + 1].cpu(), self.azimuth[view:view + 1].cpu(),
                             ones * self.distance, ones * self.fovy)

    def stale(self, view: int, step: int) -> bool:
        """Never edited, or edited ``n_views * edit_every`` or more steps ago."""
        at = int(self.edited_at[view])
        return at < 0 or step - at >= self.max_age

    def store(self, view: int, step: int, image: Tensor) -> None:
        self.images[view] = image[0]
        self.edited_at[view] = step


@torch.no_grad()
def edit_view(render: dict[str, Tensor], mesh: dict[str, Tensor], cams: Cameras, sdedit, cfg: Config, step: int,
              gen: torch.Generator, cam_gen: torch.Generator) -> Tensor:
    """SDEdit of the current render under the mesh's normal map at ``cams``: ``[1, H, W, 3]``."""
    g = cfg.guidance
    lo, hi = ramp_value(g.min_t, step), ramp_value(g.max_t, step)
    strength = lo + (hi - lo) * float(torch.rand(1, generator=cam_gen))
    normal = to_channels_first(L.to_camera(mesh["normal"], cams.c2w))
    control = normal_image(normal, to_channels_first(mesh["mask"]))
    edited = sdedit(to_channels_first(render["rgb"]), control, None, strength, 1000 // cfg.ddim_stride,
                    g.guidance_scale, cfg.controlnet_scale, cfg.encode_resolution or None, gen, cameras=cams)
    return to_channels_last(edited)


def edit_losses(rgb: Tensor, target: Tensor, lpips, w: dict[str, float]) -> dict[str, Tensor]:
    """L1, MSE and LPIPS of the render against its cached edit (each only when weighted now)."""
    losses = {}
    if active(w, "l1"):
        losses["l1"] = (rgb - target).abs().mean()
    if active(w, "mse"):
        losses["mse"] = F.mse_loss(rgb, target)
    if lpips is not None and active(w, "lpips"):
        losses["lpips"] = lpips(to_channels_first(rgb), to_channels_first(target)).mean()
    return losses


def optional_lpips(priors, cfg: Config):
    """The LPIPS network when the edit loss weights it and its weights are there; None (said once) otherwise."""
    if not ever_active(cfg, "lpips"):
        return None
    try:
        return priors.lpips
    except MissingWeightError as e:
        log.warning("texture_refine: LPIPS weights not found (%s); the edit loss runs without LPIPS",
                    str(e).splitlines()[0])
        return None


def render(atlas: Atlas, surface: Surface, cams: Cameras, res: int, cfg: Config) -> dict[str, Tensor]:
    """Albedo renders of the texture map: ``rgb`` [B, H, W, 3] over the background, ``mask`` [B, H, W, 1]."""
    shade = texture_shade(atlas.texture.clamp(0, 1), atlas.uvs, atlas.uv_faces)
    return render_albedo(surface.verts, surface.faces, cams, res, res, shade, surface.topology, cfg.background)


def run(cfg: Config, inputs: Inputs, previous, priors, ckpt) -> Result:
    """Unwrap, bake the stage-3 field, and refine the texture map for ``cfg.steps`` steps (resuming from ``ckpt``)."""
    device = stage_device(priors)
    c = cfg.camera
    ref_cam = reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy).to(device)
    require_faces(previous)
    verts = previous.verts.detach().float().to(device)
    vmapping, uvs, uv_faces = unwrap(verts, previous.faces, cfg)
    atlas = Atlas(vmapping, uvs, uv_faces, bake(previous, verts, vmapping, uvs, uv_faces, cfg)).to(device)
    opt = make_optimizer(cfg.optim, {"texture": ([atlas.texture], cfg.optim.lr)})
    gen, cam_gen = generator(device, seed_from_torch()), generator(torch.device("cpu"), seed_from_torch())
    cache = ViewCache(cfg, cam_gen).to(device)
    objects = {"atlas": atlas, "cache": cache, "optim": opt, "gen": gen, "cam_gen": cam_gen}
    start = ckpt.resume(objects)
    surface = Surface.of(previous, device, faces=atlas.faces())  # the checkpoint's atlas on resume
    sdedit, lpips = priors.sdedit, optional_lpips(priors, cfg)
    sdedit.prepare(inputs.prompt, inputs.negative_prompt)
    ref = ReferenceRGB.at(inputs, cfg.resolution, cfg.erode_px, device)
    for step in range(start, cfg.steps):
        # 1. loss weights at this step
        w = weights_at(cfg, step)
        # 2. camera: the reference every n_ref-th step, the ring's views in turn otherwise
        is_ref = step % cfg.n_ref == 0
        view = cache.view_at(step, cfg.n_ref)
        cams = ref_cam if is_ref else cache.cameras(view).to(device)
        with autocast(cfg.mixed_precision, device):
            # 3. render the texture map; 4. refresh the view's edit when it is due
            out = render(atlas, surface, cams, cfg.resolution, cfg)
            if not is_ref and cache.stale(view, step):
                mesh = render_mesh(surface.verts, surface.faces, cams, cfg.resolution, cfg.resolution,
                                   topology=surface.topology)
                cache.store(view, step, edit_view(out, mesh, cams, sdedit, cfg, step, gen, cam_gen))
            # 5. losses: the photo inside its eroded mask, or the view's cached edit
            losses = (reference_rgb_losses(out["rgb"], ref, w) if is_ref
                      else edit_losses(out["rgb"], cache.images[view:view + 1], lpips, w))
        # 6. step
        if losses:
            opt.zero_grad(set_to_none=True)
            weighted_sum(losses, w).backward()
            opt.step()
        if cfg.preview_every and (step + 1) % cfg.preview_every == 0:
            previews.write(ckpt, step + 1, _preview(atlas, surface, cfg, device))
        ckpt.step_done(step + 1, {k: v.detach() for k, v in losses.items()}, objects)
    return atlas.result(surface.verts)


@torch.no_grad()
def _preview(atlas: Atlas, surface: Surface, cfg: Config, device: torch.device) -> Tensor:
    return render(atlas, surface, previews.preview_cameras(cfg.camera).to(device), cfg.resolution, cfg)["rgb"]
