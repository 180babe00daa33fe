"""Shared fixtures for the render tests: analytic spheres and small meshes."""
from __future__ import annotations

import torch
import trimesh
from torch import Tensor


def icosphere(subdivisions: int = 3, radius: float = 0.5, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Vertices (V, 3) and outward faces (F, 3) of an icosphere at the origin."""
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return torch.tensor(m.vertices, dtype=dtype), torch.tensor(m.faces, dtype=torch.long)


def sphere_hits(origins: Tensor, dirs: Tensor, radius: float, centre=(0.0, 0.0, 0.0)):
    """Analytic ray-sphere hits: (mask, distance, normal, discriminant) per ray (..., 3)."""
    o = origins - torch.tensor(centre, dtype=origins.dtype)
    b = (o * dirs).sum(-1)
    disc = b * b - ((o * o).sum(-1) - radius**2)
    t = -b - disc.clamp(min=0).sqrt()
    normal = torch.nn.functional.normalize(o + t[..., None] * dirs, dim=-1)
    return disc > 0, t, normal, disc
