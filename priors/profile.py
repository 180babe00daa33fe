"""FLOPs of a full avatar, per stage and per network, counted on the meta device (no weights).

Real-size architectures (SD 1.5 UNet, VAE, ControlNet; Zero-1-to-3 UNet with 8 input channels) are
built on ``torch.device("meta")`` and run under ``torch.utils.flop_counter.FlopCounterMode``:
shapes propagate, nothing is computed, nothing is downloaded. One call of each network at each
size is counted once and multiplied by how often a stage calls it. Rendering is an analytic
estimate (hash-grid interpolation + field MLPs counted on meta), listed apart from the diffusion
networks whose total the paper reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from priors.weights import peak

_SD_BLOCKS = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                  attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
SD15_UNET = dict(_SD_BLOCKS, up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
"""SD 1.5 UNet (also GeneMAN 2D prior, HumanNorm models; Zero-1-to-3 with ``in_channels=8``)."""
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
"""SD 1.5 KL autoencoder (downsampling 8)."""
SD15_CONTROLNET = dict(_SD_BLOCKS, conditioning_embedding_out_channels=(16, 32, 96, 256))
"""SD 1.5 ControlNet."""
NETWORKS = ("unet", "vae", "controlnet", "rendering")


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@lru_cache(maxsize=None)
def unet_flops(latent: int, in_channels: int = 4, batch: int = 2) -> int:
    """FLOPs of one SD 1.5-size UNet forward on ``batch`` latents of side ``latent`` (CFG: batch 2)."""
    with torch.device("meta"):
        net = UNet2DConditionModel(in_channels=in_channels, **SD15_UNET).requires_grad_(False)
        x, ctx = torch.empty(batch, in_channels, latent, latent), torch.empty(batch, 77, 768)
        t = torch.zeros(batch, dtype=torch.long)
    return _flops(lambda: net(x, t, encoder_hidden_states=ctx))


@lru_cache(maxsize=None)
def controlnet_flops(latent: int, batch: int = 2) -> int:
    """FLOPs of one SD 1.5 ControlNet forward (control image 8x the latent side)."""
    with torch.device("meta"):
        net = ControlNetModel(**SD15_CONTROLNET).requires_grad_(False)
        x, ctx = torch.empty(batch, 4, latent, latent), torch.empty(batch, 77, 768)
        cond, t = torch.empty(batch, 3, 8 * latent, 8 * latent), torch.zeros(batch, dtype=torch.long)
    return _flops(lambda: net(x, t, encoder_hidden_states=ctx, controlnet_cond=cond, return_dict=False))


@lru_cache(maxsize=None)
def vae_flops(size: int, encode: bool = True, backward: bool = False) -> int:
    """FLOPs of the SD VAE encoder (optionally with the backward to its input) or decoder at ``size`` px."""
    with torch.device("meta"):
        vae = AutoencoderKL(**SD15_VAE).requires_grad_(False)
        x = torch.empty(1, 3, size, size, requires_grad=backward)
        z = torch.empty(1, 4, size // 8, size // 8)
    if not encode:
        return _flops(lambda: vae.decode(z))
    return _flops(lambda: vae.encode(x).latent_dist.mean.sum().backward() if backward else vae.encode(x))


@lru_cache(maxsize=None)
def field_flops(n_levels: int = 16, features: int = 2, hidden: int = 64, outputs: int = 4) -> int:
    """Forward FLOPs of one field query: hash-grid trilinear interpolation (8 corners x features x 2
    per level, 24 for the weights) plus a one-hidden-layer MLP counted on meta."""
    with torch.device("meta"):
        mlp = torch.nn.Sequential(torch.nn.Linear(n_levels * features, hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(hidden, outputs))
        x = torch.empty(1, n_levels * features)
    return n_levels * (16 * features + 24) + _flops(lambda: mlp(x))


@dataclass
class Row:
    """FLOPs of one stage, per network."""

    stage: str
    """Stage name."""
    calls: str
    """How many prior evaluations the stage makes (for the reader)."""
    flops: dict[str, float] = field(default_factory=dict)
    """FLOPs per network (keys of :data:`NETWORKS`)."""

    @property
    def diffusion(self) -> float:
        """FLOPs of the diffusion networks (UNet + VAE + ControlNet)."""
        return sum(v for k, v in self.flops.items() if k != "rendering")


def _sds_2d(encode: int, views: int = 1) -> dict[str, float]:
    """One 2D SDS evaluation: VAE encoder forward + backward, one CFG UNet call."""
    return {"vae": views * vae_flops(encode, backward=True), "unet": views * unet_flops(encode // 8)}


def _sds_3d(views: int = 1) -> dict[str, float]:
    """One Zero-1-to-3 SDS evaluation per view at 256 px: encoder forward + backward, 8-channel CFG UNet."""
    return {"vae": views * vae_flops(256, backward=True), "unet": views * unet_flops(32, in_channels=8)}


def _add(total: dict[str, float], part: dict[str, float], times: float) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + times * v


def guided_steps(steps: int, n_ref: int) -> int:
    """Steps that evaluate the priors: every ``n_ref``-th step is a reference step, the rest are guided."""
    return steps - steps // n_ref if n_ref > 1 else steps


def profile_geometry_init(s) -> Row:
    """Stage 1: hybrid SDS on novel views (2D encoded at 512, 3D at 256), NeRF volume rendering."""
    n = guided_steps(s.steps, s.n_ref)
    out: dict[str, float] = {}
    if peak(s.lambda_sds):
        _add(out, _sds_2d(512), n)
    if peak(s.lambda_sds_3d):
        _add(out, _sds_3d(), n)
    bounds = [0, *s.resolution_milestones, s.steps]
    pixels = sum((min(b1, s.steps) - b0) * r * r for b0, b1, r in zip(bounds, bounds[1:], s.resolutions))
    out["rendering"] = 3.0 * pixels * s.samples_per_ray * field_flops()
    return Row("geometry_init", f"{n} hybrid SDS steps", out)


def profile_geometry_sculpt(s) -> Row:
    """Stage 2: normal- and depth-adapted SDS at 512 on guided steps, one SDF query per pixel."""
    n = guided_steps(s.steps, s.n_ref)
    out: dict[str, float] = {}
    for lam in (s.lambda_sds_normal, s.lambda_sds_depth):
        if peak(lam):
            _add(out, _sds_2d(512), n)
    out["rendering"] = 3.0 * s.steps * s.resolution ** 2 * field_flops(outputs=1)
    return Row("geometry_sculpt", f"{n} x 2 adapted SDS steps", out)


def profile_texture_coarse(s) -> Row:
    """Stage 3: hybrid SDS; with ``multiview_tiles`` k, k views per step tiled into one 2D image of side
    ``encode_resolution`` and k Zero-1-to-3 evaluations; texture field queried per pixel."""
    n, k = guided_steps(s.steps, s.n_ref), max(1, s.multiview_tiles)
    encode = s.encode_resolution or s.resolution
    out: dict[str, float] = {}
    if peak(s.lambda_sds):
        _add(out, _sds_2d(encode), n)
    if peak(s.lambda_sds_3d):
        _add(out, _sds_3d(k), n)
    out["rendering"] = 3.0 * (n * k + s.steps - n) * s.resolution ** 2 * field_flops(outputs=3)
    return Row("texture_coarse", f"{n} hybrid SDS steps x {k} view(s)", out)


def profile_texture_refine(s) -> Row:
    """Stage 4: SDEdit edits (each view once, then one re-edit every ``edit_every`` steps), each
    encoding at 512, int(40 x strength) DDIM steps of ControlNet + UNet under CFG, one decode."""
    n = guided_steps(s.steps, s.n_ref)
    edits = min(n, s.n_views + s.steps // s.edit_every)
    strength = peak(s.guidance.max_t)
    ddim = int((1000 // s.ddim_stride) * strength)
    per_edit = {"vae": vae_flops(512) + vae_flops(512, encode=False), "unet": ddim * unet_flops(64),
                "controlnet": ddim * controlnet_flops(64)}
    out: dict[str, float] = {}
    _add(out, per_edit, edits)
    out["rendering"] = 3.0 * s.steps * s.resolution ** 2 * field_flops(outputs=3)
    return Row("texture_refine", f"{edits} edits x {ddim} DDIM steps", out)


def profile_avatar(run_cfg) -> list[Row]:
    """What ``geneman profile --preset NAME`` computes: FLOPs per stage and network for one avatar.

    The CLI passes the resolved run config of the preset (any object with ``geometry_init``,
    ``geometry_sculpt``, ``texture_coarse`` and ``texture_refine`` stage configs); print
    ``format_table(rows)``. Takes about 10 s on a CPU; nothing is downloaded.
    """
    return [profile_geometry_init(run_cfg.geometry_init), profile_geometry_sculpt(run_cfg.geometry_sculpt),
            profile_texture_coarse(run_cfg.texture_coarse), profile_texture_refine(run_cfg.texture_refine)]


def format_table(rows: list[Row], unit: float = 1e15) -> str:
    """Markdown table in PFLOP, with the diffusion-network total the paper compares against."""
    head = "| stage | prior calls | UNet | VAE | ControlNet | diffusion total | rendering (dense bound) |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows + [_total(rows)]:
        f = [r.flops.get(k, 0.0) / unit for k in ("unet", "vae", "controlnet")]
        lines.append(f"| {r.stage} | {r.calls} | " + " | ".join(f"{v:.2f}" for v in f) +
                     f" | {r.diffusion / unit:.2f} | {r.flops.get('rendering', 0.0) / unit:.2f} |")
    return "\n".join(lines)


def _total(rows: list[Row]) -> Row:
    total: dict[str, float] = {}
    for r in rows:
        _add(total, r.flops, 1)
    return Row("**total**", "", total)
