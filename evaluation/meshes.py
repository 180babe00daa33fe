"""Load a user's textured mesh (GLB, OBJ or PLY) into one structure: geometry and an albedo source.

Albedo is taken as stored (glTF baseColor, or vertex colour), in the file's own encoding (sRGB
for glTF textures): the benchmark compares colours as stored, unlit, and never linearises.

A file is checked before anything large is made of it: textures by their image header (trimesh opens
images lazily; one over :data:`MAX_TEXTURE_PIXELS` is refused undecoded, one over
:data:`MAX_TEXTURE_SIDE` a side is decoded once and downscaled), the vertex and face arrays as read
(finite coordinates within :data:`MAX_COORDINATE`, face indices in range) before trimesh flattens a
scene, and the mesh's extent before it is framed.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

log = logging.getLogger("geneman")

SUFFIXES = (".glb", ".gltf", ".obj", ".ply")
"""File types :func:`load_mesh` reads."""
MAX_TEXTURE_SIDE = 8192
"""Textures wider or taller than this (pixels) are downscaled by a whole factor to at most this a side."""
MAX_TEXTURE_PIXELS = 16384 * 16384
"""Textures of more pixels than this are refused from their header, never decoded (decoding one this
size takes at most about 2 GB)."""
MAX_COORDINATE = 1e6
"""Largest absolute vertex coordinate accepted (the subject's own units)."""
UNUSED_TEXTURES = ("normalTexture", "emissiveTexture", "occlusionTexture", "metallicRoughnessTexture")
"""glTF material textures the benchmark never reads: dropped on load, so that no copy decodes them."""


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


def _image_rgb(image, path: Path) -> np.ndarray:
    """PIL image -> ``[H, W, 3]`` float32 in [0, 1] (alpha dropped), in place: one float copy."""
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds on a damaged image
        raise _fail(path, f"its texture cannot be decoded ({type(err).__name__}: {err})") from None
    rgb /= 255.0
    return rgb


def _bounded_texture(image, path: Path):
    """``image`` (a lazily opened PIL image) decoded: as it is if at most :data:`MAX_TEXTURE_SIDE` a side,
    else (JPEG: at a reduced scale through ``draft``) reduced by a whole factor to fit, with a warning.

    Raises:
        ValueError: over :data:`MAX_TEXTURE_PIXELS` pixels (read from the header, nothing decoded), or
            the image data cannot be decoded.
    """
    w, h = image.size
    if w * h > MAX_TEXTURE_PIXELS:
        raise _fail(path, f"its texture is {w} x {h} pixels, more than the {MAX_TEXTURE_PIXELS} pixels this "
                          f"loader decodes; downscale it to at most {MAX_TEXTURE_SIDE} px a side")
    factor = -(-max(w, h) // MAX_TEXTURE_SIDE)
    try:
        if factor == 1:
            image.load()  # decoded here, so that damaged data is this one line and not trimesh's error
            return image
        image.draft("RGB", (w // factor, h // factor))  # JPEG only: decoded at 1/2, 1/4 or 1/8 scale
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        small = image.reduce(-(-max(image.size) // MAX_TEXTURE_SIDE))
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds on a damaged image
        raise _fail(path, f"its {w} x {h} texture cannot be decoded ({type(err).__name__}: {err})") from None
    log.warning("%s: texture %d x %d px is over %d px a side; downscaled to %d x %d", path, w, h,
                MAX_TEXTURE_SIDE, *small.size)
    return small


def _bound_textures(loaded, path: Path) -> None:
    """Bound every material's base-colour texture in place (:func:`_bounded_texture`) and drop the textures
    the benchmark never reads, before trimesh copies (decodes) any of them."""
    geometries = loaded.geometry.values() if isinstance(loaded, trimesh.Scene) else [loaded]
    for geom in geometries:
        material = getattr(getattr(geom, "visual", None), "material", None)
        if isinstance(material, trimesh.visual.material.PBRMaterial):
            for name in UNUSED_TEXTURES:
                setattr(material, name, None)
            if material.baseColorTexture is not None:
                material.baseColorTexture = _bounded_texture(material.baseColorTexture, path)
        elif getattr(material, "image", None) is not None:
            material.image = _bounded_texture(material.image, path)


def _point(p: np.ndarray) -> str:
    """A vertex as ``(x, y, z)``, six significant digits."""
    return "(" + ", ".join(f"{float(c):.6g}" for c in p) + ")"


def _check_arrays(vertices: np.ndarray, faces: np.ndarray, path: Path) -> None:
    """Every coordinate finite and within :data:`MAX_COORDINATE`, every face index a vertex of the mesh."""
    vertices, faces = np.asarray(vertices), np.asarray(faces)
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise _fail(path, f"vertex {i} is {_point(vertices[i])} ({int(bad.sum())} of {len(vertices)} vertices not "
                          "finite): every coordinate must be a finite number; fix or remove those vertices")
    far = np.abs(vertices).max(axis=1, initial=0.0) > MAX_COORDINATE
    if far.any():
        i = int(np.argmax(far))
        raise _fail(path, f"vertex {i} is at {_point(vertices[i])}, beyond +-{MAX_COORDINATE:g} (the mesh's units): "
                          "remove the stray vertices or rescale the mesh")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        j = int(np.argmax(((faces < 0) | (faces >= len(vertices))).any(axis=1)))
        raise _fail(path, f"face {j} refers to vertex {faces[j].tolist()} but the mesh has {len(vertices)} vertices "
                          f"(0 to {len(vertices) - 1}); the file's face list is damaged")


def _check_extent(vertices: np.ndarray, faces: np.ndarray, path: Path) -> None:
    """The mesh has a size, some of it across the reference view (glTF x or y), and triangles of some area."""
    side = np.ptp(vertices, axis=0)
    tiny = 1e-6 * max(float(np.abs(vertices).max()), 1e-300)  # below float precision at that offset
    if side.max() <= tiny:
        raise _fail(path, f"all {len(vertices)} vertices are at one point {_point(vertices[0])}: "
                          "the mesh has no size")
    if max(side[0], side[1]) <= tiny:
        raise _fail(path, "the mesh has no width or height (glTF x and y; +Y up, facing +Z): it is seen "
                          "edge-on from the front; rotate it to face +Z")
    tri = vertices[faces]
    if not np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).any():
        raise _fail(path, "every triangle has zero area: there is no surface to render")


def _texture_of(visual, path: Path) -> tuple[np.ndarray | None, np.ndarray]:
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
    return (None if image is None else _image_rgb(image, path)), factor


def _albedo(mesh: trimesh.Trimesh, path: Path) -> dict:
    """``colors`` or ``uvs`` + ``texture`` of one mesh, as :class:`SubjectMesh` fields."""
    visual = mesh.visual
    if visual.kind == "texture":
        image, factor = _texture_of(visual, path)
        if image is not None and visual.uv is not None and len(visual.uv) == len(mesh.vertices):
            uvs = np.asarray(visual.uv, float)
            if not np.isfinite(uvs).all():
                raise _fail(path, "some texture coordinates (UVs) are not finite numbers; fix the UV map")
            image *= factor.astype(np.float32)  # in place: a texture at the size limit has one float copy
            return {"uvs": uvs, "texture": image}
        if image is None and not np.allclose(factor, 1.0):  # a plain coloured material
            return {"colors": np.tile(factor.astype(np.float32), (len(mesh.vertices), 1))}
    if visual.kind == "vertex":
        return {"colors": np.asarray(visual.vertex_colors[:, :3], np.float32) / 255.0}
    raise _fail(path, "the mesh has no colour: expected per-vertex colours, a coloured material or a "
                      "base-colour texture with UVs")


@contextlib.contextmanager
def _header_only_images():
    """PIL's decompression-bomb limit off while trimesh opens (lazily) a file's images: their sizes are
    checked here (:func:`_bounded_texture`), with a message, rather than the texture dropped by trimesh."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _read(path: Path):
    """``trimesh.load`` of ``path`` without processing, images opened but not decoded."""
    with _header_only_images(), np.errstate(all="ignore"):
        try:
            loaded = trimesh.load(path, process=False, maintain_order=True)
            if path.suffix.lower() == ".obj" and getattr(getattr(loaded, "visual", None), "uv", None) is not None:
                # maintain_order keeps one UV per `v` line; an OBJ whose `vt` are indexed apart from its `v`
                # (welded positions, UV seams) loads right only split by (v, vt)
                loaded = trimesh.load(path, process=False)
        except Exception as err:  # trimesh raises many kinds on a damaged file
            raise _fail(path, f"cannot read the mesh ({type(err).__name__}: {err})") from err
        _bound_textures(loaded, path)
    return loaded


def _single_mesh(loaded, path: Path) -> trimesh.Trimesh:
    """A Trimesh, or a Scene flattened with its node transforms into one Trimesh (each part's arrays
    checked first, :func:`_check_arrays`)."""
    if isinstance(loaded, trimesh.Scene):
        for geom in loaded.geometry.values():
            if isinstance(geom, trimesh.Trimesh):
                _check_arrays(geom.vertices, geom.faces, path)
        with np.errstate(all="ignore"):  # a node transform of inf / nan: found in the flattened vertices
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
        ValueError: one line naming the file and what is wrong (unreadable, no triangles, no colour, a
            vertex not finite or beyond :data:`MAX_COORDINATE`, a face index out of range, no extent, a
            texture over :data:`MAX_TEXTURE_PIXELS`).
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise _fail(path, f"unsupported mesh type {path.suffix!r}: expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise _fail(path, "no such file")
    mesh = _single_mesh(_read(path), path)
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise _fail(path, "the mesh is empty: no triangles")
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    _check_arrays(vertices, faces, path)
    _check_extent(vertices, faces, path)
    return SubjectMesh(vertices=vertices, faces=faces, source=path, **_albedo(mesh, path))


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
