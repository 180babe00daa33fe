"""Test subjects made by code: textured humanoids for ``geneman bench`` and the tests (no downloads).

Each subject is a union of smooth parts (spheres, ellipsoids, capsules, tapered limbs, a cone
for a skirt), written as one signed distance function (negative inside, parts joined with a smooth
minimum), sampled on a grid and turned into one closed surface by marching cubes. Every vertex
takes the material of the part nearest to it, coloured procedurally (skin, hair, shirt with a
print on the front and a plain back, trousers, shoes ...); no colour is pure white, since the
renders use a white background. The part builders (:func:`torso_parts`, :func:`leg_parts`,
:func:`arm_parts`) and the mesh steps (:func:`closed_surface`, :func:`nearest_part`,
:func:`set_albedo`) also make :mod:`training.synth`'s procedural people.

Frame and units (glTF's): metres, +Y up, the person faces +Z (its left hand on +X), feet on
``y = 0``, centred on the Y axis; adults are about 1.7 m tall.

Example:
    >>> mesh = make_subject("front_back")
    >>> mesh.is_watertight, 1.6 < mesh.extents[1] < 1.8
    (True, True)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import trimesh
from scipy.ndimage import map_coordinates
from skimage.measure import marching_cubes

SDF = Callable[[np.ndarray], np.ndarray]
"""Signed distance ``[N, 3] -> [N]`` (negative inside)."""

VOXEL = 0.01
"""Grid spacing of the marching cubes, metres (about 30-50k faces for an adult)."""


@dataclass(frozen=True)
class Part:
    """One smooth body part: its material and its signed distance."""

    material: str
    sdf: SDF


# --- signed distances -------------------------------------------------------------------------

def sphere(centre, radius: float) -> SDF:
    """Sphere of ``radius`` at ``centre``."""
    c = np.asarray(centre, float)
    return lambda p: np.linalg.norm(p - c, axis=-1) - radius


def ellipsoid(centre, radii) -> SDF:
    """Axis-aligned ellipsoid (the usual first-order distance approximation)."""
    c, r = np.asarray(centre, float), np.asarray(radii, float)

    def f(p):
        q = (p - c) / r
        k = np.linalg.norm(q, axis=-1)
        return k * (k - 1) / np.maximum(np.linalg.norm(q / r, axis=-1), 1e-9)
    return f


def limb(a, b, ra: float, rb: float | None = None) -> SDF:
    """Capsule from ``a`` to ``b`` whose radius goes linearly from ``ra`` to ``rb`` (a tapered limb)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rb = ra if rb is None else rb
    ab = b - a

    def f(p):
        t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
        return np.linalg.norm(p - (a + t[:, None] * ab), axis=-1) - (ra + (rb - ra) * t)
    return f


def cone(y_top: float, y_bottom: float, r_top: float, r_bottom: float, depth_scale: float = 1.0) -> SDF:
    """Vertical capped cone (a skirt) on the Y axis, flattened front to back by ``depth_scale``
    (exact distance of Quilez's ``sdCappedCone`` before the flattening)."""
    h, yc = (y_top - y_bottom) / 2, (y_top + y_bottom) / 2
    k1, k2 = np.array([r_top, h]), np.array([r_top - r_bottom, 2 * h])

    def f(p):
        qx = np.hypot(p[:, 0], p[:, 2] / depth_scale)
        qy = p[:, 1] - yc
        ca = np.stack([qx - np.minimum(qx, np.where(qy < 0, r_bottom, r_top)), np.abs(qy) - h], -1)
        q = np.stack([qx, qy], -1)
        t = np.clip(((k1 - q) @ k2) / (k2 @ k2), 0.0, 1.0)
        cb = q - k1 + t[:, None] * k2
        s = np.where((cb[:, 0] < 0) & (ca[:, 1] < 0), -1.0, 1.0)
        return s * np.sqrt(np.minimum((ca ** 2).sum(-1), (cb ** 2).sum(-1)))
    return f


def smooth_union(d: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum over the first axis of ``d`` ``[P, N]`` (blend radius ``k``)."""
    out = d[0]
    for di in d[1:]:
        h = np.clip(0.5 + 0.5 * (di - out) / k, 0.0, 1.0)
        out = di * (1 - h) + out * h - k * h * (1 - h)
    return out


# --- bodies -----------------------------------------------------------------------------------
# The adult of 1.7 m is the unit: ``s`` scales every length, ``r`` the radii of arms and legs.

def torso_parts(s: float, shirt: str, head: float = 1.0, width: float = 1.0) -> list[Part]:
    """Head, hair cap, nose, neck, chest and belly of a person of scale ``s`` (height / 1.7 m).

    Args:
        s: body scale.
        shirt: material of the chest and belly.
        head: head size factor (children: above 1); the neck keeps its length, so the head sits higher.
        width: factor on the chest's and belly's width and depth.
    """
    g, lift = s * head, 0.09 * s * (head - 1)
    return [Part("skin", ellipsoid((0, 1.59 * s + lift, 0.005), (0.085 * g, 0.11 * g, 0.1 * g))),
            Part("hair", ellipsoid((0, 1.63 * s + lift, -0.02 * g), (0.092 * g, 0.095 * g, 0.1 * g))),
            Part("skin", sphere((0, 1.585 * s + lift, 0.1 * g), 0.018 * g)),  # nose: the face has a front
            Part("skin", limb((0, 1.40 * s, 0), (0, 1.50 * s, 0), 0.045 * s)),
            Part(shirt, ellipsoid((0, 1.27 * s, 0), (0.18 * s * width, 0.16 * s, 0.11 * s * width))),
            Part(shirt, ellipsoid((0, 1.07 * s, 0), (0.15 * s * width, 0.16 * s, 0.1 * s * width)))]


def leg_parts(s: float, r: float, trousers: str, shins: str | None = None, width: float = 1.0,
              spread: float = 0.0) -> list[Part]:
    """Pelvis, thighs, shins and shoes (soles on ``y = 0``) of a person of scale ``s``.

    Args:
        s, r: body scale and limb radius factor.
        trousers: material of the pelvis and thighs.
        shins: material of the shins (None: ``trousers``).
        width: factor on the pelvis's width and depth and on the hips' spacing.
        spread: how far each ankle moves outwards, metres (the knee half as far).
    """
    shins = trousers if shins is None else shins
    parts = [Part(trousers, ellipsoid((0, 0.92 * s, 0), (0.16 * s * width, 0.11 * s, 0.1 * s * width)))]
    for x in (-0.09 * s * width, 0.09 * s * width):
        out = np.sign(x) * spread
        knee, ankle_x = (x * 1.05 + out / 2, 0.48 * s, 0.01 * s), x * 1.1 + out
        parts += [Part(trousers, limb((x, 0.88 * s, 0), knee, 0.075 * s * r, 0.05 * s * r)),
                  Part(shins, limb(knee, (ankle_x, 0.09 * s, -0.01 * s), 0.05 * s * r, 0.038 * s * r)),
                  Part("shoes", ellipsoid((ankle_x, 0.045 * s, 0.04 * s), (0.05 * s, 0.045 * s, 0.12 * s)))]
    return parts


def shoulder_joint(side: int, s: float, width: float = 1.0) -> np.ndarray:
    """Centre ``[3]`` of the right (``side`` -1, on -X) or left (+1) shoulder."""
    return np.array([side * 0.19 * width, 1.38, 0]) * s


def hand_centre(elbow: np.ndarray, wrist: np.ndarray, s: float, reach: float = 0.07) -> np.ndarray:
    """Centre ``[3]`` of the hand: ``reach * s`` metres beyond the wrist, along the forearm."""
    return wrist + (wrist - elbow) / np.linalg.norm(wrist - elbow) * reach * s


def arm_parts(shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray, s: float, r: float, shirt: str,
              sleeves: str, reach: float = 0.07) -> list[Part]:
    """Upper arm (material ``shirt``), forearm (``sleeves``) and hand between the joints ``[3]`` given.

    The hand is an axis-aligned ellipsoid (0.035 s deep) at :func:`hand_centre` (``reach``): under
    about 0.035 s + the wrist's radius 0.03 s r, it meets a forearm pointing forward too.
    """
    return [Part(shirt, limb(shoulder, elbow, 0.05 * s * r, 0.04 * s * r)),
            Part(sleeves, limb(elbow, wrist, 0.038 * s * r, 0.03 * s * r)),
            Part("skin", ellipsoid(hand_centre(elbow, wrist, s, reach), (0.04 * s, 0.05 * s, 0.035 * s)))]


def _body(height: float = 1.7, limb_scale: float = 1.0, arms: str = "down", legs: bool = True,
          shirt: str = "shirt", trousers: str = "trousers", sleeves: str = "skin") -> list[Part]:
    """A standing adult in glTF axes: head, hair, neck, chest, belly, pelvis, arms, hands, legs, feet.

    Args:
        height: total height, metres (proportions scale with it).
        limb_scale: radius factor of arms and legs (0.5: thin limbs).
        arms: ``down`` (A-pose, hands beside the hips), ``held`` (right arm out at shoulder height) or
            ``bent`` (forearms forward).
        legs: include pelvis, legs and feet.
        shirt, trousers, sleeves: materials of the torso, the legs and the forearms.
    """
    s, r = height / 1.7, limb_scale
    parts = torso_parts(s, shirt) + (leg_parts(s, r, trousers) if legs else [])
    for side in (-1, 1):
        shoulder = shoulder_joint(side, s)
        if arms == "held" and side == -1:  # right arm (-X) out to the side, slightly forward
            elbow, wrist = shoulder + np.array([-0.28, 0.0, 0.06]) * s, shoulder + np.array([-0.52, 0.0, 0.12]) * s
        elif arms == "bent":  # forearms forward, hands in front of the belly
            elbow = shoulder + np.array([side * 0.06, -0.27, 0.0]) * s
            wrist = elbow + np.array([side * 0.0, 0.02, 0.24]) * s
        else:
            elbow = shoulder + np.array([side * 0.08, -0.28, -0.01]) * s
            wrist = elbow + np.array([side * 0.05, -0.25, 0.03]) * s
        parts += arm_parts(shoulder, elbow, wrist, s, r, shirt, sleeves)
    return parts


def _skirt() -> list[Part]:
    parts = _body(height=1.68, shirt="blouse", trousers="skin", sleeves="blouse")
    return parts + [Part("skirt", cone(1.0, 0.5, 0.15, 0.33, depth_scale=0.8))]


def _held_object() -> list[Part]:
    parts = _body(arms="held")
    hand = np.array([-0.19 - 0.52 - 0.07, 1.38, 0.12 + 0.016])  # beyond the right wrist, see _body
    return parts + [Part("ball", sphere(hand + np.array([-0.1, 0.0, 0.0]), 0.11))]


def _half_body() -> list[Part]:
    return _body(legs=False, arms="bent")


def _thin_limbs() -> list[Part]:
    return _body(limb_scale=0.55, shirt="vest", sleeves="skin")


def _front_back() -> list[Part]:
    return _body(shirt="two_tone", trousers="two_tone_legs", sleeves="two_tone")


_BUILDERS: dict[str, Callable[[], list[Part]]] = {
    "skirt": _skirt, "held_object": _held_object, "half_body": _half_body,
    "thin_limbs": _thin_limbs, "front_back": _front_back,
}
SUBJECTS: tuple[str, ...] = tuple(_BUILDERS)
"""Names of the built-in subjects, for :func:`make_subject`."""

_CLIP = {"half_body": 0.95}
"""Subjects cut flat below this height (metres): the half body ends at the hips."""


# --- colours ----------------------------------------------------------------------------------

def mix(mask: np.ndarray, yes, no) -> np.ndarray:
    """``[N, 3]``: colour ``yes`` (``[3]`` or ``[N, 3]``) where ``mask`` ``[N]``, else ``no``."""
    return np.where(mask[:, None], np.asarray(yes, float), np.asarray(no, float))


def _colour(material: str, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Albedo ``[N, 3]`` in [0, 0.95] of ``material`` at points ``p`` ``[N, 3]`` (front: z > 0)."""
    front = p[:, 2] > 0
    x, y = p[:, 0], p[:, 1]
    phase = rng.uniform(0, 1)
    if material == "skin":
        return np.broadcast_to([0.86, 0.66, 0.53], p.shape).copy()
    if material == "hair":
        return np.broadcast_to([0.24, 0.15, 0.08], p.shape).copy()
    if material == "shoes":
        return np.broadcast_to([0.14, 0.14, 0.17], p.shape).copy()
    if material == "shirt":  # teal front with a yellow disc printed on the chest, dark red back
        disc = front & (np.hypot(x, y - 1.26) < 0.07 + 0.02 * phase)
        return mix(disc, [0.93, 0.78, 0.12], mix(front, [0.12, 0.48, 0.58], [0.55, 0.1, 0.14]))
    if material == "trousers":  # denim, a lighter band at the knees
        knee = np.abs(y - 0.48) < 0.03
        return mix(knee, [0.35, 0.45, 0.7], [0.18, 0.25, 0.48])
    if material == "blouse":  # pink with dark dots in front, plain mauve back
        dots = front & (np.hypot((x + phase * 0.05) % 0.08 - 0.04, y % 0.08 - 0.04) < 0.018)
        return mix(dots, [0.35, 0.12, 0.3], mix(front, [0.88, 0.56, 0.66], [0.55, 0.33, 0.5]))
    if material == "skirt":  # yellow / purple stripes in front, plain purple back
        band = ((y + 0.06 * phase) // 0.06) % 2 == 0
        return mix(front & band, [0.88, 0.74, 0.28], [0.32, 0.2, 0.55])
    if material == "ball":  # orange with a dark equator
        return mix(np.abs(y - 1.38) < 0.015, [0.1, 0.1, 0.1], [0.94, 0.5, 0.1])
    if material == "vest":  # green with vertical stripes in front, grey back
        stripe = front & (((x + 0.04 * phase) // 0.04) % 2 == 0)
        return mix(stripe, [0.2, 0.42, 0.18], mix(front, [0.4, 0.7, 0.3], [0.45, 0.45, 0.5]))
    if material == "two_tone":  # saturated red front, blue back
        return mix(front, [0.9, 0.15, 0.1], [0.1, 0.3, 0.9])
    if material == "two_tone_legs":  # yellow front, green back
        return mix(front, [0.9, 0.8, 0.1], [0.1, 0.6, 0.3])
    raise KeyError(material)


# --- meshes -----------------------------------------------------------------------------------

def _distances(parts: list[Part], p: np.ndarray) -> np.ndarray:
    """``[P, N]`` signed distance of each part at ``p`` ``[N, 3]``."""
    return np.stack([part.sdf(p) for part in parts])


def _sdf_at(parts: list[Part], p: np.ndarray, k: float, clip_y: float | None) -> np.ndarray:
    """The body's signed distance ``[N]`` at ``p`` ``[N, 3]``."""
    d = smooth_union(_distances(parts, p), k)
    return d if clip_y is None else np.maximum(d, clip_y - p[:, 1])


def _grid(axes: list[np.ndarray]) -> np.ndarray:
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _grid_sdf(parts: list[Part], lo: np.ndarray, hi: np.ndarray, voxel: float, k: float,
              clip_y: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The body's SDF on a grid covering ``[lo, hi]``: volume ``[X, Y, Z]`` and its origin ``[3]``.

    Evaluated exactly only in a band around the surface: first on every other grid point, then
    at the points whose trilinear estimate is within 1.5 coarse cell diagonals of zero (further
    out the estimate has the right sign, which is all marching cubes uses there).
    """
    axes = [np.arange(a, b + voxel, voxel) for a, b in zip(lo, hi)]
    shape = tuple(len(a) for a in axes)
    coarse = _sdf_at(parts, _grid([a[::2] for a in axes]), k, clip_y).reshape([len(a[::2]) for a in axes])
    approx = map_coordinates(coarse, np.indices(shape).reshape(3, -1) / 2.0, order=1, mode="nearest")
    band = np.abs(approx) < 1.5 * np.sqrt(3) * 2 * voxel
    approx[band] = _sdf_at(parts, _grid(axes)[band], k, clip_y)
    return approx.reshape(shape), np.array([a[0] for a in axes])


BOX = ((-1.2, 1.2), (-0.1, 1.9), (-0.6, 0.6))
"""Default search box of :func:`closed_surface`: ``(lo, hi)`` metres along X, Y and Z."""


def _bounds(parts: list[Part], k: float, clip_y: float | None, box,
            step: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """Box ``(lo, hi)`` around the body's inside, from a coarse grid over ``box``, padded by two coarse cells.

    Raises:
        ValueError: the body reaches the edge of ``box`` (its mesh would be cut open there).
    """
    axes = [np.arange(a, b, step) for a, b in box]
    inside = _sdf_at(parts, _grid(axes), k, clip_y) < step
    idx = np.argwhere(inside.reshape([len(a) for a in axes]))
    if (idx.min(0) == 0).any() or (idx.max(0) == [len(a) - 1 for a in axes]).any():
        raise ValueError(f"the body reaches the edge of its box {box} (metres)")
    origin = np.array([a[0] for a in axes])
    return origin + (idx.min(0) - 2) * step, origin + (idx.max(0) + 2) * step


def closed_surface(parts: list[Part], voxel: float = VOXEL, k: float = 0.02, clip_y: float | None = None,
                   box=BOX) -> trimesh.Trimesh:
    """Parts -> one closed, outward-facing triangle mesh (no colours) by marching cubes.

    Args:
        parts: the body parts (smooth-unioned with blend radius ``k``, metres).
        voxel: marching-cubes grid spacing, metres.
        k: smooth-union blend radius, metres.
        clip_y: cut the body flat below this height (None: no cut).
        box: ``((x0, x1), (y0, y1), (z0, z1))``, metres, that holds the whole body (:data:`BOX`).
    """
    lo, hi = _bounds(parts, k, clip_y, box)
    vol, origin = _grid_sdf(parts, lo, hi, voxel, k, clip_y)
    verts, faces, _, _ = marching_cubes(vol, level=0.0, spacing=(voxel,) * 3)
    verts = verts + origin
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if mesh.volume < 0:
        mesh.faces = mesh.faces[:, ::-1].copy()
    return mesh


def nearest_part(parts: list[Part], points: np.ndarray) -> np.ndarray:
    """Index ``[N]`` of the part whose surface is nearest to each point ``[N, 3]`` (its material colours it)."""
    return np.argmin(_distances(parts, points), axis=0)


def set_albedo(mesh: trimesh.Trimesh, rgb: np.ndarray) -> trimesh.Trimesh:
    """Give ``mesh`` per-vertex albedo ``rgb`` ``[V, 3]`` (clipped to [0, 0.95], as RGBA uint8); returns it."""
    rgba = np.concatenate([np.round(np.clip(rgb, 0, 0.95) * 255), np.full((len(rgb), 1), 255)], 1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba.astype(np.uint8))
    return mesh


def build_mesh(parts: list[Part], seed: int = 0, voxel: float = VOXEL, k: float = 0.02,
               clip_y: float | None = None) -> trimesh.Trimesh:
    """Parts -> one closed, outward-facing triangle mesh with per-vertex albedo (RGBA uint8), each vertex
    coloured by the material of its :func:`nearest_part`.

    Args:
        parts: the body parts (smooth-unioned with blend radius ``k``, metres).
        seed: seed of the colour patterns' random phases.
        voxel: marching-cubes grid spacing, metres.
        k: smooth-union blend radius, metres.
        clip_y: cut the body flat below this height (None: no cut).
    """
    mesh = closed_surface(parts, voxel, k, clip_y)
    material = nearest_part(parts, mesh.vertices)
    rng = np.random.default_rng(seed)
    rgb = np.zeros_like(mesh.vertices)
    for i in np.unique(material):  # one draw per part present, in a fixed order: deterministic
        sel = material == i
        rgb[sel] = _colour(parts[i].material, mesh.vertices[sel], rng)
    return set_albedo(mesh, rgb)


def make_subject(name: str) -> trimesh.Trimesh:
    """Build the subject ``name`` (one of :data:`SUBJECTS`), deterministically.

    Returns:
        A closed triangle mesh in glTF axes and metres with per-vertex albedo in
        ``mesh.visual.vertex_colors`` (``[V, 4]`` uint8).

    Raises:
        ValueError: unknown name (the known ones are listed).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown subject {name!r}; known: {', '.join(SUBJECTS)}")
    seed = int.from_bytes(name.encode()[:4].ljust(4, b"\0"), "little")
    return build_mesh(_BUILDERS[name](), seed=seed, clip_y=_CLIP.get(name))


def write_subject(name: str, path: str | Path) -> Path:
    """Write subject ``name`` as GLB, OBJ or PLY, chosen by the suffix of ``path``; returns the path.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_subject("skirt", Path(d) / "skirt.ply").stat().st_size > 0
        True
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("glb", "obj", "ply"):
        raise ValueError(f"{path}: write_subject writes .glb, .obj or .ply, not {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    make_subject(name).export(path, file_type=suffix)
    return path
