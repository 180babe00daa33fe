"""Textured mesh export through trimesh: GLB (texture embedded) and OBJ + MTL + PNG, and re-import."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor


def to_trimesh(verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor) -> trimesh.Trimesh:
    """A trimesh with a PBR-free simple material.

    Args:
        verts: [V, 3] vertices, already split along UV seams.
        faces: [F, 3] triangles.
        uvs: [V, 2] per-vertex texture coordinates (``v`` up).
        texture: [H, W, 3] or [H, W, 4] colours in [0, 1], row 0 at ``v = 1``.

    Example:
        >>> tri = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]])
        >>> mesh = to_trimesh(*tri, torch.tensor([[0.0, 0], [1, 0], [0, 1]]), torch.full((4, 4, 3), 0.5))
        >>> mesh.faces.tolist(), mesh.visual.uv.tolist(), mesh.visual.material.image.size
        ([[0, 1, 2]], [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], (4, 4))
    """
    img = (texture.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    image = Image.fromarray(img)
    material = trimesh.visual.material.SimpleMaterial(image=image)
    visual = trimesh.visual.TextureVisuals(uv=uvs.detach().cpu().numpy(), image=image, material=material)
    return trimesh.Trimesh(verts.detach().cpu().numpy(), faces.cpu().numpy(), visual=visual, process=False)


def export_glb(path: str | Path, verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor) -> Path:
    """Write a binary glTF with the texture embedded; returns the path.

    Example:
        >>> import tempfile
        >>> verts, faces = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]])
        >>> uvs, texture = torch.tensor([[0.0, 0], [1, 0], [0, 1]]), torch.full((4, 4, 3), 0.5)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = export_glb(Path(d) / "avatar.glb", verts, faces, uvs, texture)
        ...     print(sorted(p.name for p in path.parent.iterdir()), path.stat().st_size > 0)
        ['avatar.glb'] True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_trimesh(verts, faces, uvs, texture).export(path, file_type="glb")
    return path


def export_obj(path: str | Path, verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor) -> Path:
    """Write ``name.obj`` with ``material.mtl`` and ``material_0.png`` beside it; returns the OBJ path.

    Example:
        >>> import tempfile
        >>> verts, faces = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]])
        >>> uvs, texture = torch.tensor([[0.0, 0], [1, 0], [0, 1]]), torch.full((4, 4, 3), 0.5)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = export_obj(Path(d) / "final" / "avatar.obj", verts, faces, uvs, texture)
        ...     print(sorted(p.name for p in path.parent.iterdir()))
        ['avatar.obj', 'material.mtl', 'material_0.png']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_trimesh(verts, faces, uvs, texture).export(path, file_type="obj", include_texture=True)
    return path


def load_textured(path: str | Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Load a GLB or OBJ written by this module.

    Returns:
        verts [V, 3], faces [F, 3], uvs [V, 2] and texture [H, W, C] in [0, 1].

    Example:
        >>> import tempfile
        >>> verts, faces = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]])
        >>> uvs, texture = torch.tensor([[0.0, 0], [1, 0], [0, 1]]), torch.full((4, 4, 3), 0.5)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     v, f, uv, tex = load_textured(export_glb(Path(d) / "a.glb", verts, faces, uvs, texture))
        >>> v.tolist() == verts.tolist(), f.tolist(), uv.tolist() == uvs.tolist()
        (True, [[0, 1, 2]], True)
        >>> tex.shape, round(tex[0, 0, 0].item() * 255)  # 8-bit colours: 0.5 is stored as 128
        (torch.Size([4, 4, 3]), 128)
    """
    mesh = trimesh.load(Path(path), force="mesh", process=False)
    visual = mesh.visual
    if not isinstance(visual, trimesh.visual.TextureVisuals) or visual.uv is None:
        raise ValueError(f"{path} holds no UVs")
    material = visual.material
    image = getattr(material, "image", None)
    if image is None:
        image = getattr(material, "baseColorTexture", None)
    if image is None:
        raise ValueError(f"{path} holds no texture image")
    tex = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    return (torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32)),
            torch.from_numpy(np.asarray(mesh.faces, dtype=np.int64)),
            torch.from_numpy(np.asarray(visual.uv, dtype=np.float32)), tex)
