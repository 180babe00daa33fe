"""Textured mesh files: GLB (PBR material, texture embedded) and OBJ + MTL + PNG, written atomically,
and read back.

Frames: in memory, meshes are in the scene frame of :mod:`stages.render.cameras` (z up, the
reference camera on +x, so the person faces +x). The files hold the glTF frame (+y up, the person
facing +z, towards a viewer's default camera), so Blender, three.js and other viewers show the
person upright and facing the viewer. The writers rotate by :data:`SCENE_TO_GLTF`;
:func:`load_textured` rotates back by default (``to_scene=False`` gives the file's own frame). It is
the inverse of :data:`evaluation.framing.GLTF_TO_SCENE`, by which the benchmark maps glTF subjects
into the scene (a test checks that the two agree). The rotation is a permutation of the axes: exact
in floating point, and right-handed, so triangle winding is kept.

UV convention (OBJ / glTF through trimesh): ``v`` points up, so texel row 0 is ``v = 1``.
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor

SCENE_TO_GLTF = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
"""Rotation ``[3, 3]`` from the scene frame (z up, facing +x) to glTF's (+y up, facing +z):
glTF ``(x, y, z)`` = scene ``(y, z, x)``."""


def to_gltf_frame(points: np.ndarray) -> np.ndarray:
    """Scene-frame points (or normals) ``[N, 3]`` -> glTF frame ``[N, 3]``.

    Example:
        >>> to_gltf_frame(np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])).tolist()  # up, towards the camera
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    return np.asarray(points, dtype=np.float64) @ SCENE_TO_GLTF.T


def to_scene_frame(points: np.ndarray) -> np.ndarray:
    """glTF-frame points ``[N, 3]`` -> scene frame ``[N, 3]`` (the inverse of :func:`to_gltf_frame`)."""
    return np.asarray(points, dtype=np.float64) @ SCENE_TO_GLTF


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, a dot name) to write to; renamed onto ``path``
    when the block ends without an error, removed when it raises. So a failure leaves no half-written
    file under the final name, and an old file there stays until the new one is whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask decides the mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return path


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` (or 4) -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def to_uint8(image: Tensor) -> np.ndarray:
    """Colours ``[..., C]`` in [0, 1] (an image ``[H, W, C]``, a batch ``[B, H, W, C]``) -> uint8 array,
    rounded to nearest.

    Example:
        >>> to_uint8(torch.tensor([0.0, 0.5, 1.0, 2.0])).tolist()
        [0, 128, 255, 255]
    """
    return (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def texture_image(texture: Tensor) -> Image.Image:
    """``[H, W, 3]`` (or 4) in [0, 1], row 0 at ``v = 1`` -> 8-bit PIL image."""
    return Image.fromarray(to_uint8(texture))


def weld(verts: Tensor) -> tuple[Tensor, Tensor]:
    """Positions ``[V, 3]`` of a mesh split along seams -> unique positions ``[W, 3]`` and each vertex's
    index ``[V]`` into them (bitwise equal positions are one)."""
    welded, inverse = torch.unique(verts.detach().float().cpu(), dim=0, return_inverse=True)
    return welded, inverse


def smooth_normals(verts: Tensor, faces: Tensor) -> np.ndarray:
    """Area-weighted vertex normals ``[V, 3]`` computed on the welded mesh, so that they do not break
    along UV seams (a split vertex gets its welded vertex's normal)."""
    welded, inverse = weld(verts)
    f = inverse[faces.long().cpu()]
    tri = welded[f]
    n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)  # length = 2 x area
    acc = torch.zeros_like(welded).index_add_(0, f.reshape(-1), n.repeat_interleave(3, dim=0))
    acc = torch.nn.functional.normalize(acc, dim=-1)
    return acc[inverse].double().numpy()


def to_trimesh(verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor, rotate: bool = True) -> trimesh.Trimesh:
    """A trimesh in the glTF frame with a PBR material: baseColor texture, baseColorFactor 1 (not
    trimesh's SimpleMaterial, whose glTF form has baseColorFactor 0.4), metallic 0, roughness 1, and
    smooth vertex normals.

    Args:
        verts: [V, 3] scene-frame vertices, already split along UV seams.
        faces: [F, 3] triangles.
        uvs: [V, 2] per-vertex texture coordinates (``v`` up).
        texture: [H, W, 3] or [H, W, 4] colours in [0, 1], row 0 at ``v = 1``.
        rotate: rotate ``verts`` from the scene frame into glTF's; False: they are in the frame wanted
            already (e.g. a subject's own, :meth:`evaluation.framing.Framing.to_subject`).

    Example:
        >>> tri = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]])
        >>> mesh = to_trimesh(*tri, torch.tensor([[0.0, 0], [1, 0], [0, 1]]), torch.full((4, 4, 3), 0.5))
        >>> mesh.faces.tolist(), mesh.vertices.tolist()[1], mesh.visual.material.baseColorTexture.size
        ([[0, 1, 2]], [0.0, 0.0, 1.0], (4, 4))
    """
    material = trimesh.visual.material.PBRMaterial(
        name="avatar", baseColorTexture=texture_image(texture), baseColorFactor=[1.0, 1.0, 1.0, 1.0],
        metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uvs.detach().cpu().numpy(), material=material)
    frame = to_gltf_frame if rotate else np.asarray
    mesh = trimesh.Trimesh(frame(verts.detach().cpu().numpy()), faces.cpu().numpy(), visual=visual, process=False)
    mesh.vertex_normals = frame(smooth_normals(verts, faces))
    return mesh


def glb_bytes(verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor) -> bytes:
    """The binary glTF 2.0 of :func:`to_trimesh`'s mesh: one node and mesh named ``avatar``, the
    texture embedded as PNG."""
    scene = trimesh.Scene({"avatar": to_trimesh(verts, faces, uvs, texture)})
    return trimesh.exchange.gltf.export_glb(scene, include_normals=True)


def export_glb(path: str | Path, verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor) -> Path:
    """Write a binary glTF with the texture embedded (glTF frame, see the module docstring); returns the path.

    Example:
        >>> import tempfile
        >>> verts, faces = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]])
        >>> uvs, texture = torch.tensor([[0.0, 0], [1, 0], [0, 1]]), torch.full((4, 4, 3), 0.5)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = export_glb(Path(d) / "avatar.glb", verts, faces, uvs, texture)
        ...     print(sorted(p.name for p in path.parent.iterdir()), path.stat().st_size > 0)
        ['avatar.glb'] True
    """
    return atomic_write(path, glb_bytes(verts, faces, uvs, texture))


def _obj_text(verts: Tensor, faces: Tensor, uvs: Tensor, mtl: str) -> str:
    """OBJ text: welded positions (glTF frame) as ``v``, the UVs as ``vt``, faces as ``f v/vt``."""
    welded, inverse = weld(verts)
    pos = to_gltf_frame(welded.numpy())
    f = np.stack([inverse[faces.long().cpu()].numpy(), faces.long().cpu().numpy()], axis=-1) + 1  # [F, 3, 2]
    lines = [f"# geneman avatar: {len(pos)} vertices, {len(f)} triangles; +Y up, facing +Z", f"mtllib {mtl}",
             "o avatar"]
    lines += [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in pos]
    lines += [f"vt {u:.7g} {v:.7g}" for u, v in uvs.detach().cpu().double().numpy()]
    lines.append("usemtl avatar")
    lines += [f"f {a}/{b} {c}/{d} {e}/{g}" for (a, b), (c, d), (e, g) in f.tolist()]
    return "\n".join(lines) + "\n"


def export_obj(path: str | Path, verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor) -> Path:
    """Write ``NAME.obj`` with ``NAME.mtl`` (Kd 1 1 1, ``map_Kd NAME_albedo.png``) and the texture
    ``NAME_albedo.png`` beside it (glTF frame, positions welded); returns the OBJ path. The PNG and the
    MTL are renamed into place before the OBJ that names them.

    Example:
        >>> import tempfile
        >>> verts, faces = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]])
        >>> uvs, texture = torch.tensor([[0.0, 0], [1, 0], [0, 1]]), torch.full((4, 4, 3), 0.5)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = export_obj(Path(d) / "final" / "avatar.obj", verts, faces, uvs, texture)
        ...     print(sorted(p.name for p in path.parent.iterdir()))
        ['avatar.mtl', 'avatar.obj', 'avatar_albedo.png']
    """
    path = Path(path)
    png, mtl = path.with_name(f"{path.stem}_albedo.png"), path.with_suffix(".mtl")
    atomic_write(png, png_bytes(to_uint8(texture)))
    atomic_write(mtl, (f"newmtl avatar\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nNs 0\nd 1\nillum 1\n"
                       f"map_Kd {png.name}\n").encode())
    return atomic_write(path, _obj_text(verts, faces, uvs, mtl.name).encode())


def load_textured(path: str | Path, to_scene: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Load a GLB or OBJ written by this module.

    Args:
        path: the file.
        to_scene: rotate the positions from the file's glTF frame back into the scene frame (what
            :func:`export_glb` / :func:`export_obj` were given); False keeps the file's frame.

    Returns:
        verts [V, 3], faces [F, 3], uvs [V, 2] and texture [H, W, C] in [0, 1], split along seams (feed
        them to :meth:`stages.textured_mesh.TexturedMesh.from_split` for a welded mesh).

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
    mesh = trimesh.load(Path(path), force="mesh", process=False)  # not maintain_order: it drops an OBJ's seams
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
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    verts = to_scene_frame(verts) if to_scene else verts
    return (torch.from_numpy(verts.astype(np.float32)), torch.from_numpy(np.asarray(mesh.faces, dtype=np.int64)),
            torch.from_numpy(np.asarray(visual.uv, dtype=np.float32)), tex)
