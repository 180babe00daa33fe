"""Volume rendering: ray sampling in a bounding sphere, alpha compositing, RGB / opacity / depth /
normal maps, background colour or model (NeRF, Mildenhall et al. 2020, eq. 3)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from stages.render import rng
from stages.render.fields import density_normals
from stages.render.occupancy import OccupancyGrid


def ray_sphere(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances of unit-direction rays [R, 3] through a sphere at the origin.

    Returns:
        near [R], far [R] (near clamped at 0) and hit [R] bool.

    Example:
        >>> near, far, hit = ray_sphere(torch.tensor([[0.0, 0, 3]]), torch.tensor([[0.0, 0, -1]]), 1.0)
        >>> near.item(), far.item(), hit.item()
        (2.0, 4.0, True)
    """
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    hit = disc > 0
    root = disc.clamp(min=0).sqrt()
    near = (-b - root).clamp(min=0)
    far = -b + root
    return near, far, hit & (far > near)


def stratified_samples(near: Tensor, far: Tensor, n_samples: int, perturb: bool = True,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Interval starts and ends [R, S] splitting [near, far] into ``n_samples`` equal bins, each
    sample jittered within its bin when ``perturb``."""
    u = torch.linspace(0, 1, n_samples + 1, device=near.device)
    edges = near[:, None] + (far - near)[:, None] * u
    if perturb:
        mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
        lo = torch.cat([edges[:, :1], mids], dim=1)
        hi = torch.cat([mids, edges[:, -1:]], dim=1)
        edges = lo + (hi - lo) * rng.rand(edges.shape, generator, near.device)
    return edges[:, :-1], edges[:, 1:]


def compositing_weights(density: Tensor, t_starts: Tensor, t_ends: Tensor) -> Tensor:
    """Weights [R, S]: ``w_i = T_i (1 - exp(-sigma_i delta_i))``, ``T_i = prod_{j<i} exp(-sigma_j delta_j)``.

    Example:
        >>> w = compositing_weights(torch.tensor([[0.0, 1e4]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 2.0]]))
        >>> w.tolist()
        [[0.0, 1.0]]
    """
    tau = density * (t_ends - t_starts)
    alpha = 1 - torch.exp(-tau)
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(tau[:, :1]), tau[:, :-1]], dim=1), dim=1))
    return alpha * trans


def composite(weights: Tensor, values: Tensor) -> Tensor:
    """Weighted sum over samples: [R, S] and [R, S, C] -> [R, C]."""
    return (weights[..., None] * values).sum(1)


class DirectionBackground(nn.Module):
    """Learned background colour as a function of ray direction (a small MLP, sigmoid output)."""

    def __init__(self, n_neurons: int = 16, color_dim: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, n_neurons), nn.ReLU(), nn.Linear(n_neurons, color_dim))

    def forward(self, dirs: Tensor) -> Tensor:
        return torch.sigmoid(self.net(dirs))


def background_color(background: Tensor | Callable[[Tensor], Tensor], dirs: Tensor) -> Tensor:
    """Per-ray background [R, C] from a constant colour [C] or a model of the ray direction."""
    if isinstance(background, Tensor):
        return background.to(dirs).expand(dirs.shape[0], -1)
    return background(dirs)


def render_rays(field, origins: Tensor, dirs: Tensor, radius: float = 1.0, n_samples: int = 64,
                occupancy: OccupancyGrid | None = None, background: Tensor | Callable | None = None,
                normals: str | None = None, normal_eps: float = 1e-2, perturb: bool = False,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Volume-render rays through a field inside a sphere of ``radius``.

    Args:
        field: callable [N, 3] -> (density [N], color [N, C]) with a ``density`` method [N, 3] -> [N],
            e.g. :class:`stages.render.fields.DensityField`.
        origins, dirs: [R, 3] rays (unit directions).
        radius: bounding-sphere radius; rays missing it return the background.
        n_samples: samples per ray between the sphere's entry and exit.
        occupancy: if given, samples in empty cells are skipped (never evaluated).
        background: constant colour [C], a direction model, or None for black.
        normals: None, ``analytic`` or ``finite_difference`` (see :func:`.fields.density_normals`).
        normal_eps: finite-difference step.
        perturb: jitter samples within their bins.
        generator: random generator for the jitter.

    Returns:
        ``rgb`` [R, C] over the background, ``opacity`` [R, 1], ``depth`` [R, 1] (expected distance along
        the ray, not divided by opacity), ``weights`` [R, S], ``t_mid`` [R, S], and ``normal`` [R, 3] if
        asked (weighted sum of unit normals, not renormalised), with the per-sample ``sample_normal``
        [N, 3], ``sample_weight`` [N], ``sample_dir`` [N, 3] and ``sample_point`` [N, 3] of the N
        evaluated samples (for per-sample regularisers such as the orientation loss).
    """
    assert origins.shape == dirs.shape and origins.shape[-1] == 3, (origins.shape, dirs.shape)
    near, far, hit = ray_sphere(origins, dirs, radius)
    t0, t1 = stratified_samples(near, far, n_samples, perturb, generator)
    t_mid = 0.5 * (t0 + t1)
    pts = origins[:, None] + dirs[:, None] * t_mid[..., None]  # [R, S, 3]
    keep = hit[:, None].expand_as(t_mid)
    if occupancy is not None:
        keep = keep & occupancy.query(pts)
    sel = keep.reshape(-1).nonzero().squeeze(1)
    flat = pts.reshape(-1, 3)[sel]
    dens, color = field(flat)
    n_rays, n_s = t_mid.shape
    density = torch.zeros(n_rays * n_s, dtype=dens.dtype, device=dens.device).index_copy(0, sel, dens)
    weights = compositing_weights(density.reshape(n_rays, n_s), t0, t1)
    w_sel = weights.reshape(-1)[sel]
    out = {"weights": weights, "t_mid": t_mid}
    out["opacity"] = weights.sum(1, keepdim=True)
    out["depth"] = (weights * t_mid).sum(1, keepdim=True)
    rgb = _scatter_sum(w_sel[:, None] * color, sel // n_s, n_rays)
    bg = background_color(background if background is not None else torch.zeros(color.shape[-1]), dirs)
    out["rgb"] = rgb + (1 - out["opacity"]) * bg
    if normals is not None:
        nrm = density_normals(field.density, flat, normals, normal_eps)
        out["normal"] = _scatter_sum(w_sel[:, None] * nrm, sel // n_s, n_rays)
        out["sample_normal"], out["sample_weight"] = nrm, w_sel
        out["sample_dir"], out["sample_point"] = dirs[sel // n_s], flat
    return out


def _scatter_sum(values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Sum [N, C] values into [n_rows, C] by row index (differentiable)."""
    return torch.zeros(n_rows, values.shape[-1], dtype=values.dtype, device=values.device).index_add(0, rows, values)


def render_image(field, cameras, height: int, width: int, chunk: int = 2**14, **kwargs) -> dict[str, Tensor]:
    """Render full images [B, H, W, C] from :class:`stages.render.cameras.Cameras`, ``chunk`` rays at a
    time; keyword arguments go to :func:`render_rays`. Returns every per-ray output as [B, H, W, C] and
    the per-sample ``sample_*`` outputs concatenated over all rays."""
    o, d = cameras.rays(height, width)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    parts = [render_rays(field, oc, dc, **kwargs) for oc, dc in zip(o.split(chunk), d.split(chunk))]
    out = {}
    for key in parts[0]:
        if key in ("weights", "t_mid"):
            continue
        joined = torch.cat([p[key] for p in parts])
        out[key] = joined if key.startswith("sample_") else joined.reshape(len(cameras), height, width, -1)
    return out
