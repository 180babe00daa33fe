"""The avatar: a closed mesh with a UV atlas and an albedo texture map (stage 4's Result).

Vertices are stored welded (``verts``, the mesh the geometry stages made) beside the UV atlas
(``uvs`` over ``uv_faces``, split along seams; ``vmapping`` names each UV vertex's mesh vertex), so
the closed mesh renders with culling and antialiasing, and the split one is what file formats hold.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from stages.render.antialias import build_topology
from stages.render.cameras import Cameras
from stages.render.texture_render import render_albedo, texture_shade

MESH_FILE = "textured.safetensors"


@dataclass
class TexturedMesh:
    """A textured mesh.

    Attributes:
        verts: [V, 3] welded vertex positions.
        vmapping: [U] mesh vertex of each UV vertex.
        uvs: [U, 2] texture coordinates in [0, 1] (``v`` up).
        uv_faces: [F, 3] triangles over the UV vertices.
        texture: [T, T, 3] albedo in [0, 1], row 0 at ``v = 1``.
    """

    verts: Tensor
    vmapping: Tensor
    uvs: Tensor
    uv_faces: Tensor
    texture: Tensor

    @property
    def faces(self) -> Tensor:
        """[F, 3] the same triangles over the welded vertices."""
        return self.vmapping[self.uv_faces]

    def split(self) -> tuple[Tensor, Tensor, Tensor]:
        """The mesh split along UV seams, as file formats hold it: verts [U, 3], faces [F, 3], uvs [U, 2]."""
        return self.verts[self.vmapping], self.uv_faces, self.uvs

    def render(self, cameras: Cameras, height: int, width: int,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, Tensor]:
        """Unlit albedo ``rgb`` [B, H, W, 3] over ``background`` and ``mask`` [B, H, W, 1] from ``cameras``
        (:func:`stages.render.texture_render.render_albedo`)."""
        faces = self.faces
        shade = texture_shade(self.texture, self.uvs, self.uv_faces)
        return render_albedo(self.verts, faces, cameras.to(self.verts.device), height, width, shade,
                             build_topology(faces), background)

    def save(self, folder: Path) -> None:
        """``textured.safetensors`` (exact) and ``texture.png`` (8-bit, for people)."""
        tensors = {"verts": self.verts.float(), "vmapping": self.vmapping.long(), "uvs": self.uvs.float(),
                   "uv_faces": self.uv_faces.long(), "texture": self.texture.float()}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / MESH_FILE))
        Image.fromarray(to_uint8(self.texture)).save(folder / "texture.png")
        (folder / "meta.json").write_text(json.dumps({"texture_size": int(self.texture.shape[0])}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "TexturedMesh":
        """Read what :meth:`save` wrote."""
        t = load_file(str(folder / MESH_FILE))
        return cls(t["verts"], t["vmapping"], t["uvs"], t["uv_faces"], t["texture"])

    @classmethod
    def from_split(cls, verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor) -> "TexturedMesh":
        """From a mesh split along seams (as a GLB / OBJ holds it): vertices at the same position are welded."""
        welded, inverse = torch.unique(verts.float(), dim=0, return_inverse=True)
        return cls(welded, inverse.long(), uvs.float(), faces.long(), texture.float())


def to_uint8(image: Tensor) -> np.ndarray:
    """``[H, W, C]`` in [0, 1] -> uint8 array."""
    return (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
