"""Unlit albedo renders of a fixed mesh whose colour comes from a shading function per covered pixel
(a texture field at the surface point, or a UV texture lookup): stages 3 and 4, the turntable, the
benchmark's appearance figures.

The composition is that of the ground-truth renders (:mod:`evaluation.truth`): premultiplied albedo
and coverage are antialiased together, then the background fills what the coverage leaves.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from stages.render.antialias import Topology, antialias
from stages.render.cameras import Cameras
from stages.render.interpolate import interpolate
from stages.render.mesh_render import signed_volume
from stages.render.rasterize import rasterize, transform_to_clip
from stages.render.uv import sample_texture

Shade = Callable[[Tensor, Tensor], Tensor]
"""``shade(rast, pixels) -> [P, 3]``: colours of the covered pixels, given the raster ``[B, H, W, 4]``
and the covered pixels' flat indices ``[P]`` into ``B * H * W`` (in increasing order)."""


def render_albedo(verts: Tensor, faces: Tensor, cameras: Cameras, height: int, width: int, shade: Shade,
                  topology: Topology | None = None, background: Sequence[float] | Tensor = (1.0, 1.0, 1.0),
                  backend: str = "auto") -> dict[str, Tensor]:
    """Render ``shade``'s colours on the mesh from ``cameras``.

    Args:
        verts: [V, 3] world positions.
        faces: [F, 3] triangles (closed and outward when ``topology`` says closed: back faces are culled).
        cameras: B cameras.
        height, width: image size.
        shade: colours of the covered pixels, see :data:`Shade`; gradients flow through it.
        topology: :func:`stages.render.antialias.build_topology` of ``faces``, reused across calls.
        background: RGB filled where the coverage leaves.

    Returns:
        ``rgb`` [B, H, W, 3] (antialiased, over the background), ``mask`` [B, H, W, 1] antialiased
        coverage, ``rast`` [B, H, W, 4].
    """
    faces = faces.long()
    cull = topology is not None and topology.closed and bool(signed_volume(verts, faces) > 0)
    pos = transform_to_clip(verts, cameras.mvp(width / height).to(verts.device))
    rast = rasterize(pos, faces, (height, width), backend=backend, cull_backfaces=cull)
    b = rast.shape[0]
    pixels = (rast[..., 3].reshape(-1) > 0).nonzero().squeeze(1)
    colour = shade(rast, pixels)
    flat = torch.zeros(b * height * width, 3, dtype=colour.dtype, device=colour.device).index_copy(0, pixels, colour)
    mask = (rast[..., 3:] > 0).to(colour.dtype)
    maps = antialias(torch.cat([mask, flat.reshape(b, height, width, 3)], dim=-1), rast, pos, faces, topology,
                     backend)
    mask, albedo = maps[..., :1].clamp(0, 1), maps[..., 1:]
    bg = torch.as_tensor(background, dtype=albedo.dtype, device=albedo.device)
    return {"rgb": albedo + (1 - mask) * bg, "mask": mask, "rast": rast}


def field_shade(field: Callable[[Tensor], Tensor], verts: Tensor, faces: Tensor) -> Shade:
    """Colour each covered pixel by ``field`` at its interpolated world point (stage 3's texture field)."""
    def shade(rast: Tensor, pixels: Tensor) -> Tensor:
        world = interpolate(verts, rast, faces).reshape(-1, 3).index_select(0, pixels)
        return field(world)
    return shade


def texture_shade(texture: Tensor, uvs: Tensor, uv_faces: Tensor) -> Shade:
    """Colour each covered pixel by a bilinear lookup of ``texture`` [T, T, 3] at its interpolated UV
    (``uvs`` [U, 2] over ``uv_faces`` [F, 3], face for face the rasterised ``faces``)."""
    def shade(rast: Tensor, pixels: Tensor) -> Tensor:
        uv = interpolate(uvs, rast, uv_faces).reshape(-1, 2).index_select(0, pixels)
        return sample_texture(texture, uv)
    return shade


def vertex_shade(colors: Tensor, faces: Tensor) -> Shade:
    """Colour each covered pixel by the interpolated per-vertex ``colors`` [V, 3] of ``faces`` [F, 3]
    (the geometry stages' meshes).

    Example:
        >>> from stages.render.cameras import reference_camera
        >>> verts = torch.tensor([[0.0, -0.3, -0.3], [0.0, 0.3, -0.3], [0.0, 0.0, 0.3]])  # facing +x
        >>> faces, grey = torch.tensor([[0, 1, 2]]), torch.full((3, 3), 0.25)
        >>> out = render_albedo(verts, faces, reference_camera(), 8, 8, vertex_shade(grey, faces))
        >>> out["rgb"][0, 4, 4].tolist(), out["rgb"][0, 0, 0].tolist()  # on the triangle; background
        ([0.25, 0.25, 0.25], [1.0, 1.0, 1.0])
    """
    def shade(rast: Tensor, pixels: Tensor) -> Tensor:
        return interpolate(colors, rast, faces).reshape(-1, colors.shape[-1]).index_select(0, pixels)
    return shade
