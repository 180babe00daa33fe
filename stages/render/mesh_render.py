"""Mesh rendering from cameras: antialiased mask, depth, normal and attribute maps."""
from __future__ import annotations

import torch
from torch import Tensor

from stages.render.antialias import Topology, antialias
from stages.render.cameras import Cameras
from stages.render.interpolate import interpolate
from stages.render.rasterize import rasterize, transform_to_clip


def face_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Unit normals [F, 3] of triangles ``faces`` [F, 3] over ``verts`` [V, 3], counter-clockwise outward."""
    v = verts[faces.long()]
    return torch.nn.functional.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals [V, 3]."""
    faces = faces.long()
    v = verts[faces]
    n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)  # length = 2 * area
    acc = torch.zeros_like(verts).index_add(0, faces.reshape(-1), n.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(acc, dim=-1)


def signed_volume(verts: Tensor, faces: Tensor) -> Tensor:
    """Volume enclosed by a closed mesh, positive when its triangles face outward.

    Example:
        >>> v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
        >>> round(signed_volume(v, torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])).item(), 4)
        0.1667
    """
    v = verts[faces.long()]
    return (v[:, 0] * torch.cross(v[:, 1], v[:, 2], dim=-1)).sum() / 6


def render_mesh(verts: Tensor, faces: Tensor, cameras: Cameras, height: int, width: int,
                attrs: Tensor | None = None, smooth_normals: bool = True, aa: bool = True,
                topology: Topology | None = None, backend: str = "auto",
                cull_backfaces: bool | None = None) -> dict[str, Tensor]:
    """Render a mesh from a batch of cameras.

    Args:
        verts: [V, 3] world positions (gradients flow to them).
        faces: [F, 3] vertex indices.
        cameras: B cameras.
        height, width: image size.
        attrs: optional [V, C] vertex attributes (e.g. colours) to interpolate.
        smooth_normals: interpolate vertex normals (True) or use face normals.
        aa: antialias the mask, normal and attribute maps (silhouette gradients).
        topology: :func:`stages.render.antialias.build_topology` of ``faces``, reused across calls.
        backend: rasteriser backend, see :func:`stages.render.rasterize.rasterize`.
        cull_backfaces: skip back faces (about halves rasterisation time); only right for closed,
            outward-oriented meshes. None: decided here, True when ``topology`` says the mesh is closed
            and its signed volume is positive.

    Returns:
        ``mask`` [B, H, W, 1]; ``depth`` [B, H, W, 1], distance along each pixel's ray, 0 on background;
        ``normal`` [B, H, W, 3] unit world normals, 0 on background; ``attrs`` [B, H, W, C] if given;
        ``rast`` [B, H, W, 4]; ``position`` [B, H, W, 3] world positions.
    """
    faces = faces.long()
    if cull_backfaces is None:
        cull_backfaces = topology is not None and topology.closed and bool(signed_volume(verts, faces) > 0)
    pos = transform_to_clip(verts, cameras.mvp(width / height).to(verts.device))
    rast = rasterize(pos, faces, (height, width), backend=backend, cull_backfaces=cull_backfaces)
    mask = (rast[..., 3:] > 0).to(verts.dtype)
    world = interpolate(verts, rast, faces, backend=backend)
    depth = (world - cameras.position.to(verts)[:, None, None, :]).norm(dim=-1, keepdim=True) * mask
    if smooth_normals:
        normal = interpolate(vertex_normals(verts, faces), rast, faces, backend=backend)
    else:
        fid = rast[..., 3].long() - 1
        normal = face_normals(verts, faces)[fid.clamp(min=0)] * mask
    normal = torch.nn.functional.normalize(normal, dim=-1)
    out = {"rast": rast, "position": world, "depth": depth}
    maps = {"mask": mask, "normal": normal}
    if attrs is not None:
        maps["attrs"] = interpolate(attrs, rast, faces, backend=backend)
    if aa:
        names = list(maps)
        stacked = antialias(torch.cat([maps[n] for n in names], dim=-1), rast, pos, faces, topology, backend)
        sizes = [maps[n].shape[-1] for n in names]
        maps = dict(zip(names, stacked.split(sizes, dim=-1)))
    out.update(maps)
    return out
