"""Load a user's textured mesh (GLB, OBJ or PLY) into one structure: geometry and an albedo source.

Albedo is taken as stored (glTF baseColor, or vertex colour), in the file's own encoding (sRGB
for glTF textures): the benchmark compares colours as stored, unlit, and never linearises.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

SUFFIXES = (".glb", ".gltf", ".obj", ".ply")
"""File types :func:`load_mesh` reads."""


@dataclass
class SubjectMesh:
    """A triangle mesh with its albedo, as loaded from a file (its own frame and units).

    Attributes:
        vertices: ``[V, 3]`` float64 positions.
        faces: ``[F, 3]`` int64 vertex indices, counter-clockwise seen from outside.
        colors: ``[V, 3]`` float32 per-vertex albedo in [0, 1], or None when ``texture`` is set.
        uvs: ``[V, 2]`` texture coordinates (``v`` up, row 0 of ``texture`` at ``v = 1``), or None.
        texture: ``[Ht, Wt, 3]`` float32 albedo texture in [0, 1], or None.
        source: the file it came from, if any.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None
    source: Path | None = None

    def __post_init__(self):
        assert self.vertices.ndim == 2 and self.vertices.shape[1] == 3, self.vertices.shape
        assert self.faces.ndim == 2 and self.faces.shape[1] == 3, self.faces.shape
        assert (self.colors is None) != (self.texture is None), "exactly one albedo source"
        assert self.colors is None or self.colors.shape == self.vertices.shape
        assert self.texture is None or (self.uvs is not None and self.uvs.shape == (len(self.vertices), 2))

    @property
    def albedo_kind(self) -> str:
        """``vertex`` (per-vertex colours) or ``texture`` (UVs + image)."""
        return "vertex" if self.colors is not None else "texture"


def _fail(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {' '.join(what.split())}")


def _image_rgb(image) -> np.ndarray:
    """PIL image -> ``[H, W, 3]`` float32 in [0, 1] (alpha dropped)."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _texture_of(visual) -> tuple[np.ndarray | None, np.ndarray]:
    """The base-colour texture (or None) and colour factor ``[3]`` of a TextureVisuals' material.

    glTF: ``baseColor = baseColorFactor * baseColorTexture`` (the spec's product).
    """
    mat = visual.material
    if isinstance(mat, trimesh.visual.material.PBRMaterial):
        factor = np.ones(3) if mat.baseColorFactor is None else np.asarray(mat.baseColorFactor[:3], float) / 255.0
        image = mat.baseColorTexture
    else:  # OBJ / MTL: map_Kd is the colour where present (trimesh writes Kd 0.4 beside it), else Kd
        image = getattr(mat, "image", None)
        diffuse = getattr(mat, "diffuse", None)
        factor = np.ones(3) if image is not None or diffuse is None else np.asarray(diffuse[:3], float) / 255.0
    return (None if image is None else _image_rgb(image)), factor


def _albedo(mesh: trimesh.Trimesh, path: Path) -> dict:
    """``colors`` or ``uvs`` + ``texture`` of one mesh, as :class:`SubjectMesh` fields."""
    visual = mesh.visual
    if visual.kind == "texture":
        image, factor = _texture_of(visual)
        if image is not None and visual.uv is not None and len(visual.uv) == len(mesh.vertices):
            return {"uvs": np.asarray(visual.uv, float), "texture": (image * factor).astype(np.float32)}
        if image is None and not np.allclose(factor, 1.0):  # a plain coloured material
            return {"colors": np.tile(factor.astype(np.float32), (len(mesh.vertices), 1))}
    if visual.kind == "vertex":
        return {"colors": np.asarray(visual.vertex_colors[:, :3], np.float32) / 255.0}
    raise _fail(path, "the mesh has no colour: expected per-vertex colours, a coloured material or a "
                      "base-colour texture with UVs")


def _single_mesh(loaded, path: Path) -> trimesh.Trimesh:
    """A Trimesh, or a Scene flattened with its node transforms into one Trimesh."""
    if isinstance(loaded, trimesh.Scene):
        meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
        if not meshes:
            raise _fail(path, "the file holds no triangles")
        if len(meshes) == 1:
            return meshes[0]
        kinds = {m.visual.kind for m in meshes}
        if kinds != {"vertex"}:  # mixed or textured parts: bring all to vertex colours
            meshes = [m.copy() for m in meshes]
            for m in meshes:
                if m.visual.kind == "texture":
                    m.visual = m.visual.to_color()
        return trimesh.util.concatenate(meshes)
    if not isinstance(loaded, trimesh.Trimesh):
        raise _fail(path, f"expected a triangle mesh, found a {type(loaded).__name__} (points or lines?)")
    return loaded


def load_mesh(path: str | Path) -> SubjectMesh:
    """Read a GLB / glTF / OBJ / PLY file into a :class:`SubjectMesh`, any scale and placement.

    Scenes are flattened with their node transforms. A single textured mesh keeps its UVs and
    texture; several parts of a scene that are not all vertex-coloured are brought to per-vertex
    colours (textures sampled at the vertices).

    Raises:
        ValueError: one line naming the file and what is wrong (unreadable, no triangles, no colour).
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise _fail(path, f"unsupported mesh type {path.suffix!r}: expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        loaded = trimesh.load(path, process=False, maintain_order=True)
        if path.suffix.lower() == ".obj" and getattr(getattr(loaded, "visual", None), "uv", None) is not None:
            # maintain_order keeps one UV per `v` line; an OBJ whose `vt` are indexed apart from its `v`
            # (welded positions, UV seams) loads right only split by (v, vt)
            loaded = trimesh.load(path, process=False)
    except Exception as err:  # trimesh raises many kinds on a damaged file
        raise _fail(path, f"cannot read the mesh ({type(err).__name__}: {err})") from err
    mesh = _single_mesh(loaded, path)
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise _fail(path, "the mesh is empty: no triangles")
    return SubjectMesh(vertices=np.asarray(mesh.vertices, np.float64), faces=np.asarray(mesh.faces, np.int64),
                       source=path, **_albedo(mesh, path))


def from_trimesh(mesh: trimesh.Trimesh, source: Path | None = None) -> SubjectMesh:
    """A :class:`SubjectMesh` of an in-memory Trimesh (e.g. :func:`evaluation.subjects.make_subject`)."""
    name = source or Path("<in-memory mesh>")
    return SubjectMesh(vertices=np.asarray(mesh.vertices, np.float64), faces=np.asarray(mesh.faces, np.int64),
                       source=source, **_albedo(mesh, name))


def as_subject_mesh(mesh) -> SubjectMesh:
    """Accept a :class:`SubjectMesh`, a Trimesh or a path."""
    if isinstance(mesh, SubjectMesh):
        return mesh
    if isinstance(mesh, trimesh.Trimesh):
        return from_trimesh(mesh)
    return load_mesh(mesh)
