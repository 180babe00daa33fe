"""A small textured avatar for the evaluation tests: an icosphere, the fallback UV atlas, a seeded texture."""
from __future__ import annotations

import torch
import trimesh

from stages.render.uv import fallback_uv
from stages.textured_mesh import TexturedMesh


def textured_sphere(subdivisions: int = 2, radius: float = 0.5, seed: int = 0, texture_size: int = 32) -> TexturedMesh:
    """Each triangle its own random colour (the fallback atlas gives every face its own cell), so views differ."""
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    verts, faces = torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.long)
    uv = fallback_uv(verts, faces)
    texture = torch.rand(texture_size, texture_size, 3, generator=torch.Generator().manual_seed(seed))
    return TexturedMesh(verts, uv.vmapping, uv.uvs, uv.faces, texture)
