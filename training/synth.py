"""Procedural people, seeded and reproducible (no downloads): the raw material of the priors' training data.

Person ``i`` of seed ``S`` is :func:`sample_person` of ``np.random.default_rng([S, i])`` alone, so a
run of 20 people starts with the 10 of a run of 10. A :class:`PersonSpec` holds every number that
shapes or colours one person: height (1.0 to 1.9 m; the shorter, the bigger the head, as children
are), build, limb thickness, the pose (each arm's angles at shoulder and elbow, the legs' spread, a
turn of the upper body), half or full body, clothing (shirt with long, short or no sleeves over
trousers, shorts, a flared skirt, or a dress: a long flared cone from the chest), hair (a short cap,
long hair down the back, a bun), a held object (a ball in a hand, a bag hanging from one) and the
palette and patterns (stripes, dots, checks, a chest print on the front only; the back in another
colour or pattern, so front and back always differ).

:func:`build_person` turns a spec into one closed mesh with per-vertex albedo by the smooth SDF parts
and marching cubes of :mod:`evaluation.subjects`, in the same frame: glTF axes, metres, +Y up,
facing +Z, feet on ``y = 0`` (a half body is cut flat at the hips where its full body would stand).
The held object touches its hand, so every mesh is one connected piece. No colour is pure white
(the renders use a white background). :func:`synth` writes ``person_0000.glb`` ... and
``manifest.json``.

Example:
    >>> spec = sample_person(np.random.default_rng([0, 3]))
    >>> spec == person(0, 3), build_person(spec, voxel=0.02).is_watertight
    (True, True)
"""
from __future__ import annotations

import colorsys
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy
import skimage
import trimesh

from evaluation.subjects import (
    SDF,
    Part,
    arm_parts,
    closed_surface,
    cone,
    hand_centre,
    leg_parts,
    limb,
    mix,
    nearest_part,
    set_albedo,
    shoulder_joint,
    sphere,
    torso_parts,
)
from stages.render.export import atomic_write

VERSION = 1
"""Version of the generator: a change to what a (seed, index) builds raises it."""

VOXEL = 0.01
"""Default marching-cubes grid spacing, metres (10-80k faces a person)."""

VOXEL_RANGE = (0.004, 0.02)
"""Grid spacings allowed, metres: the thinnest parts (wrists, bag straps) are 0.02 m in radius."""

MANIFEST = "manifest.json"
"""The file :func:`synth` writes last, listing every person."""

OUTFITS = ("trousers", "shorts", "skirt", "dress")
SLEEVES = ("long", "short", "none")
HAIRS = ("short", "long", "bun")
HELD = ("none", "ball", "bag")
PATTERNS = ("plain", "stripes", "vstripes", "dots", "checks")
BACK_PATTERNS = ("plain", "stripes")
PRINTS = ("none", "disc", "square", "diamond")

_COVER = {"plain": 0.0, "stripes": 0.5, "vstripes": 0.5, "checks": 0.5, "dots": np.pi * 0.3 ** 2}
"""Fraction of a pattern's area in its accent colour (for the front's mean colour)."""
_SKIN = ((0.96, 0.8, 0.69), (0.9, 0.7, 0.57), (0.8, 0.6, 0.46), (0.68, 0.48, 0.34), (0.55, 0.37, 0.25),
         (0.4, 0.26, 0.17), (0.28, 0.18, 0.12))
_HAIR = ((0.06, 0.05, 0.05), (0.2, 0.12, 0.07), (0.36, 0.22, 0.12), (0.72, 0.56, 0.32), (0.55, 0.22, 0.1),
         (0.6, 0.6, 0.62))
_UPPER_ARM, _FOREARM = 0.29, 0.26
"""Shoulder-elbow and elbow-wrist lengths at body scale 1 (those of :mod:`evaluation.subjects`' adult)."""
_REACH = 0.045
"""Wrist to hand centre at body scale 1 (:func:`evaluation.subjects.hand_centre`): the hand meets the forearm
in any pose."""
_STRAP = 0.02
"""Radius of a bag's strap, metres."""
_BOX = ((-1.5, 1.5), (-0.1, 2.2), (-0.8, 1.3))
"""Search box of the marching cubes, metres: the tallest person, arms out, holding a ball."""

Colour = tuple[float, float, float]
"""RGB albedo in [0, 1]."""


@dataclass(frozen=True)
class Pattern:
    """How a garment or an object is coloured: the front (``z > 0`` in the torso's frame) and the back."""

    colour: Colour
    """Front base colour."""
    accent: Colour
    """Second colour of the front's pattern and of the back's stripes."""
    kind: str
    """Front pattern, one of :data:`PATTERNS`."""
    period: float
    """Repeat of the pattern, metres."""
    phase: float
    """Offset of the pattern, in periods, [0, 1)."""
    back: Colour
    """Back base colour (unlike the front's, and the back's mean colour unlike the front's)."""
    back_kind: str
    """Back pattern, one of :data:`BACK_PATTERNS`."""


@dataclass(frozen=True)
class ArmPose:
    """One arm's angles, degrees."""

    abduct: float
    """Upper arm out to the side from hanging straight down (90: horizontal)."""
    flex: float
    """Upper arm swung forward (negative: back)."""
    elbow: float
    """Forearm bent forward from straight."""


@dataclass(frozen=True)
class PersonSpec:
    """Everything that shapes and colours one generated person (metres, degrees, RGB in [0, 1])."""

    height: float
    """Top of the hair cap above the soles, standing (a half body is cut from this figure)."""
    head: float
    """Head size factor: 1 for adults, up to 1.5 for the shortest children."""
    width: float
    """Factor on the torso's width and depth and the shoulders' and hips' spacing."""
    limbs: float
    """Factor on the radii of arms and legs."""
    right_arm: ArmPose
    left_arm: ArmPose
    spread: float
    """How far each ankle is moved outwards, metres."""
    turn: float
    """Turn of the upper body (torso, head, arms, held object) about +Y, degrees (positive: towards its left)."""
    half_body: bool
    """Cut flat at the hips (no legs)."""
    outfit: str
    """One of :data:`OUTFITS`."""
    sleeves: str
    """One of :data:`SLEEVES`."""
    hem: float | None
    """Height of a skirt's or dress's hem (None for trousers and shorts)."""
    flare: float | None
    """Radius of a skirt's or dress's hem, side to side (None for trousers and shorts)."""
    hair: str
    """One of :data:`HAIRS`."""
    skin: Colour
    hair_colour: Colour
    shoes: Colour
    top: Pattern
    """The shirt or the dress."""
    bottom: Pattern
    """Trousers, shorts or skirt (unused by a dress)."""
    chest_print: str
    """A print on the front of the top, one of :data:`PRINTS`."""
    print_colour: Colour
    print_size: float
    """Half width of the print, metres."""
    held: str
    """One of :data:`HELD`."""
    held_side: int
    """Hand holding it: -1 right (on -X), +1 left, 0 none."""
    held_size: float
    """A ball's radius or a bag's height, metres (0: none)."""
    held_pattern: Pattern | None

    @property
    def scale(self) -> float:
        """Body scale: lengths relative to :mod:`evaluation.subjects`' 1.7 m adult."""
        return self.height / (1.54 + 0.185 * self.head)  # the top of torso_parts' hair cap

    @property
    def clip_y(self) -> float | None:
        """Height of a half body's cut (None: a full body)."""
        return 0.95 * self.scale if self.half_body else None


# --- sampling ---------------------------------------------------------------------------------

def _num(x: float, digits: int = 4) -> float:
    return float(round(float(x), digits))


def _colour(rng: np.random.Generator, value=(0.2, 0.9)) -> Colour:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(*value))
    return tuple(_num(c, 3) for c in rgb)


def _far(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b)))


def _unlike(rng: np.random.Generator, *others: Colour, least: float = 0.3) -> Colour:
    """A random colour at least ``least`` (RGB distance) from each of ``others``."""
    while True:
        c = _colour(rng)
        if all(_far(c, o) >= least for o in others):
            return c


def _pattern(rng: np.random.Generator) -> Pattern:
    """A random :class:`Pattern` whose back colour and back mean colour differ from the front's."""
    colour = _colour(rng)
    accent = _unlike(rng, colour)
    kind, back_kind = str(rng.choice(PATTERNS)), str(rng.choice(BACK_PATTERNS))
    front_mean = np.add(np.multiply(colour, 1 - _COVER[kind]), np.multiply(accent, _COVER[kind]))
    while True:
        back = _colour(rng)
        back_mean = back if back_kind == "plain" else np.add(back, accent) / 2
        if _far(back, colour) >= 0.3 and _far(back_mean, front_mean) >= 0.25:
            break
    return Pattern(colour, accent, kind, _num(rng.uniform(0.05, 0.14)), _num(rng.uniform(0, 1)), back, back_kind)


def _arm(rng: np.random.Generator, lo, hi) -> ArmPose:
    return ArmPose(*(_num(rng.uniform(a, b), 2) for a, b in zip(lo, hi)))


_POSES = {  # (abduct, flex, elbow) ranges, degrees
    ("none", False): ((8, -20, 0), (70, 40, 100)),
    ("none", True): ((5, 5, 85), (45, 45, 120)),  # half body: hands in front, above the cut
    ("ball", False): ((30, 10, 10), (80, 50, 60)),
    ("ball", True): ((20, 30, 60), (60, 60, 100)),
    ("bag", False): ((14, -10, 0), (30, 15, 25)),  # half bodies hold no bag
}


def _arms(rng: np.random.Generator, s: float, width: float, half: bool, held: str, side: int,
          size: float) -> tuple[ArmPose, ArmPose]:
    """Right and left arm poses; a half body's hands and ball stay above its cut (poses redrawn)."""
    while True:
        arms = [_arm(rng, *_POSES[(held if sd == side else "none", half)]) for sd in (-1, 1)]
        if not half:
            return arms[0], arms[1]
        lowest = []
        for sd, pose in zip((-1, 1), arms):
            _, elbow, wrist = arm_joints(pose, sd, s, width)
            lowest.append(min(elbow[1], wrist[1]) - 0.06 * s)
            if held == "ball" and sd == side:
                lowest.append(ball_centre(elbow, wrist, s, size)[1] - size)
        if min(lowest) > 0.98 * s:
            return arms[0], arms[1]


def sample_person(rng: np.random.Generator) -> PersonSpec:
    """Draw one person's :class:`PersonSpec` from ``rng``: the same generator state, the same person."""
    height = _num(rng.uniform(1.0, 1.9))
    head = _num(1 + 0.5 * np.clip((1.55 - height) / 0.55, 0, 1))
    s = height / (1.54 + 0.185 * head)  # PersonSpec.scale
    width = _num(rng.uniform(0.85, 1.3))
    limbs = _num(max(rng.uniform(0.75, 1.3), 0.67 / s))  # wrists 0.03 s r: at least 0.02 m in radius
    half = bool(rng.random() < 0.2)
    outfit = str(rng.choice(OUTFITS, p=(0.35, 0.2, 0.2, 0.25)))
    hem = flare = None
    if outfit == "skirt":
        hem, flare = _num(rng.uniform(0.4, 0.8) * s), _num(rng.uniform(0.2, 0.4) * s * width)
    elif outfit == "dress":
        hem, flare = _num(rng.uniform(0.3, 0.65) * s), _num(rng.uniform(0.22, 0.45) * s * width)
    held = str(rng.choice(HELD, p=(0.6, 0.4, 0.0) if half else (0.4, 0.3, 0.3)))
    side = 0 if held == "none" else int(rng.choice((-1, 1)))
    size = 0.0 if held == "none" else _num(rng.uniform(*{"ball": (0.08, 0.13), "bag": (0.2, 0.34)}[held])
                                           * max(0.7, s))
    right, left = _arms(rng, s, width, half, held, side, size)
    top = _pattern(rng)
    return PersonSpec(
        height=height, head=head, width=width, limbs=limbs, right_arm=right, left_arm=left,
        spread=_num(rng.uniform(0, 0.12) * s), turn=_num(rng.uniform(-15, 15), 2), half_body=half, outfit=outfit,
        sleeves=str(rng.choice(SLEEVES)), hem=hem, flare=flare, hair=str(rng.choice(HAIRS, p=(0.4, 0.35, 0.25))),
        skin=_between(rng, _SKIN), hair_colour=_between(rng, _HAIR), shoes=_colour(rng, value=(0.08, 0.5)),
        top=top, bottom=_pattern(rng), chest_print=str(rng.choice(PRINTS)), print_colour=_unlike(rng, top.colour),
        print_size=_num(rng.uniform(0.04, 0.08) * s), held=held, held_side=side, held_size=size,
        held_pattern=None if held == "none" else _pattern(rng))


def _between(rng: np.random.Generator, palette) -> Colour:
    """A colour between two neighbours of ``palette`` (skin tones, hair colours)."""
    i, t = int(rng.integers(len(palette) - 1)), rng.uniform(0, 1)
    return tuple(_num(a + (b - a) * t, 3) for a, b in zip(palette[i], palette[i + 1]))


def person(seed: int, index: int) -> PersonSpec:
    """Person ``index`` of ``seed``: :func:`sample_person` of ``np.random.default_rng([seed, index])``."""
    return sample_person(np.random.default_rng([seed, index]))


# --- geometry ---------------------------------------------------------------------------------

def arm_joints(pose: ArmPose, side: int, s: float, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shoulder, elbow and wrist ``[3]`` of the right (``side`` -1) or left (+1) arm in ``pose``, before any turn."""
    a, b, c = np.radians([pose.abduct, pose.flex, pose.elbow])
    upper = np.array([side * np.sin(a), -np.cos(a) * np.cos(b), np.cos(a) * np.sin(b)])  # unit
    forward = np.array([0.0, 0.0, 1.0]) - upper[2] * upper  # the forward direction across the upper arm
    fore = upper * np.cos(c) + forward / np.linalg.norm(forward) * np.sin(c)
    shoulder = shoulder_joint(side, s, width)
    elbow = shoulder + _UPPER_ARM * s * upper
    return shoulder, elbow, elbow + _FOREARM * s * fore


def ball_centre(elbow: np.ndarray, wrist: np.ndarray, s: float, radius: float) -> np.ndarray:
    """Centre ``[3]`` of a ball of ``radius`` resting on the hand, along the forearm."""
    return hand_centre(elbow, wrist, s, _REACH) + (wrist - elbow) / np.linalg.norm(wrist - elbow) * 0.85 * radius


def rounded_box(centre, half, radius: float) -> SDF:
    """Axis-aligned box of half extents ``half`` ``[3]`` at ``centre``, its edges rounded by ``radius`` (exact)."""
    c, h = np.asarray(centre, float), np.asarray(half, float) - radius

    def f(p):
        q = np.abs(p - c) - h
        return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0) - radius
    return f


def _turn(points: np.ndarray, degrees: float) -> np.ndarray:
    """World points ``[N, 3]`` -> the frame of an upper body turned by ``degrees`` about +Y (its front, +Z,
    turned towards +X for positive angles)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    x, z = points[:, 0], points[:, 2]
    return np.stack([c * x - s * z, points[:, 1], s * x + c * z], -1)


def _turned(sdf: SDF, degrees: float) -> SDF:
    return lambda p: sdf(_turn(p, degrees))


def _hair(spec: PersonSpec) -> list[Part]:
    """The hair beyond torso_parts' cap: long hair down the back or a bun."""
    s, gs = spec.scale, spec.scale * spec.head
    y = 1.63 * s + 0.09 * s * (spec.head - 1)  # the cap's centre
    if spec.hair == "long":
        return [Part("hair", limb((0, y - 0.01 * s, -0.04 * gs), (0, 1.32 * s, -0.1 * s * spec.width),
                                  0.085 * gs, 0.06 * s))]
    if spec.hair == "bun":
        return [Part("hair", sphere((0, y + 0.04 * gs, -0.1 * gs), 0.05 * gs))]
    return []


def _held_parts(spec: PersonSpec, elbow: np.ndarray, wrist: np.ndarray) -> list[Part]:
    s, size = spec.scale, spec.held_size
    if spec.held == "ball":
        return [Part("held", sphere(ball_centre(elbow, wrist, s, size), size))]
    hand = hand_centre(elbow, wrist, s, _REACH)
    top = hand - np.array([0, 0.12 * s, 0])
    return [Part("held", limb(hand, top, _STRAP)),
            Part("held", rounded_box(top - np.array([0, size / 2, 0]), (0.05, size / 2, 0.55 * size), 0.02))]


def person_parts(spec: PersonSpec) -> list[Part]:
    """The smooth parts of ``spec``'s body (materials ``skin``, ``hair``, ``shoes``, ``top``, ``bottom``, ``held``)."""
    s, w, r = spec.scale, spec.width, spec.limbs
    upper = torso_parts(s, "top", spec.head, w) + _hair(spec)
    shirt, forearm = {"long": ("top", "top"), "short": ("top", "skin"), "none": ("skin", "skin")}[spec.sleeves]
    for side, pose in ((-1, spec.right_arm), (1, spec.left_arm)):
        shoulder, elbow, wrist = arm_joints(pose, side, s, w)
        upper += [Part("top", limb((side * 0.08 * s * w, 1.36 * s, 0), shoulder, 0.05 * s))]  # inside the chest
        upper += arm_parts(shoulder, elbow, wrist, s, r, shirt, forearm, _REACH)
        if side == spec.held_side:
            upper += _held_parts(spec, elbow, wrist)
    parts = [Part(p.material, _turned(p.sdf, spec.turn)) for p in upper]
    if not spec.half_body:
        legs = {"trousers": ("bottom", None), "shorts": ("bottom", "skin")}.get(spec.outfit, ("skin", None))
        parts += leg_parts(s, r, *legs, width=w, spread=spec.spread)
    if spec.outfit == "skirt":
        parts.append(Part("bottom", cone(1.0 * s, spec.hem, 0.16 * s * w, spec.flare, depth_scale=0.8)))
    elif spec.outfit == "dress":
        parts.append(Part("top", cone(1.24 * s, spec.hem, 0.16 * s * w, spec.flare, depth_scale=0.7)))
    return parts


# --- colours ----------------------------------------------------------------------------------

def pattern_albedo(pattern: Pattern, p: np.ndarray) -> np.ndarray:
    """Albedo ``[N, 3]`` of ``pattern`` at points ``p`` ``[N, 3]`` of its wearer's frame (front: z > 0)."""
    x, y = p[:, 0] + pattern.phase * pattern.period, p[:, 1]
    u = pattern.period
    stripes = (y // (u / 2)) % 2 == 0
    on = {"plain": np.zeros(len(p), bool), "stripes": stripes, "vstripes": (x // (u / 2)) % 2 == 0,
          "dots": np.hypot(x % u - u / 2, y % u - u / 2) < 0.3 * u,
          "checks": (x // (u / 2) + y // (u / 2)) % 2 == 0}[pattern.kind]
    back = mix(stripes & (pattern.back_kind == "stripes"), pattern.accent, pattern.back)
    return mix(p[:, 2] > 0, mix(on, pattern.accent, pattern.colour), back)


def _print_mask(spec: PersonSpec, p: np.ndarray) -> np.ndarray:
    """``[N]``: inside the chest print (front only), at points ``p`` ``[N, 3]`` of the torso's frame."""
    dx, dy = np.abs(p[:, 0]), np.abs(p[:, 1] - 1.25 * spec.scale)
    inside = {"none": np.zeros(len(p), bool), "disc": np.hypot(dx, dy) < spec.print_size,
              "square": np.maximum(dx, dy) < spec.print_size, "diamond": dx + dy < 1.3 * spec.print_size}
    return inside[spec.chest_print] & (p[:, 2] > 0)


def albedo(spec: PersonSpec, material: str, p: np.ndarray) -> np.ndarray:
    """Albedo ``[N, 3]`` of ``material`` (see :func:`person_parts`) at world points ``p`` ``[N, 3]``."""
    local = _turn(p, spec.turn)
    plain = {"skin": spec.skin, "hair": spec.hair_colour, "shoes": spec.shoes}
    if material in plain:
        return np.broadcast_to(np.asarray(plain[material], float), p.shape).copy()
    if material == "top":
        return mix(_print_mask(spec, local), spec.print_colour, pattern_albedo(spec.top, local))
    if material == "bottom":
        return pattern_albedo(spec.bottom, p)
    return pattern_albedo(spec.held_pattern, local)


# --- meshes and files -------------------------------------------------------------------------

def build_person(spec: PersonSpec, voxel: float = VOXEL) -> trimesh.Trimesh:
    """``spec`` -> one closed, connected triangle mesh in glTF axes and metres, with per-vertex albedo in
    ``mesh.visual.vertex_colors`` (``[V, 4]`` uint8, RGB at most 0.95 x 255), deterministically.

    Args:
        spec: the person.
        voxel: marching-cubes grid spacing, metres (:data:`VOXEL_RANGE`).
    """
    parts = person_parts(spec)
    mesh = closed_surface(parts, voxel, clip_y=spec.clip_y, box=_BOX)
    material = nearest_part(parts, mesh.vertices)
    rgb = np.zeros_like(mesh.vertices)
    for i in np.unique(material):
        sel = material == i
        rgb[sel] = albedo(spec, parts[i].material, mesh.vertices[sel])
    return set_albedo(mesh, rgb)


def check_request(n: int, out_dir: Path, seed: int, voxel: float) -> None:
    """Raise ``ValueError`` (one line) when :func:`synth` cannot run with these arguments."""
    if n < 1:
        raise ValueError(f"the number of people must be at least 1, not {n}")
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed {seed} is out of range; give 0 to 2^63 - 1")
    if not VOXEL_RANGE[0] <= voxel <= VOXEL_RANGE[1]:
        raise ValueError(f"voxel {voxel} m is out of range; give {VOXEL_RANGE[0]} to {VOXEL_RANGE[1]} m")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"{out_dir} is a file; give a folder for the meshes")


def synth(n: int, out_dir: str | Path, seed: int, voxel: float = VOXEL,
          progress: Callable[[int], None] | None = None) -> Path:
    """Write people ``0 .. n-1`` of ``seed`` as ``out_dir/person_0000.glb`` ... and then ``manifest.json``.

    Each file is written under a temporary name and renamed, so an interrupted run leaves no
    half-written file, and the manifest comes last. The same arguments give the same bytes (with the
    same numpy, scikit-image and trimesh; the manifest records their versions). Files of an earlier run
    that this one does not write are left as they are; the manifest lists this run's.

    Args:
        n: number of people.
        out_dir: folder (created when missing).
        seed: seed, 0 to 2^63 - 1.
        voxel: marching-cubes grid spacing, metres.
        progress: called with the number of people done after each person.

    Returns:
        The manifest's path. It holds ``generator``, ``version``, ``seed``, ``n``, ``voxel``, the library
        versions and ``people``: per person its ``file``, ``faces``, ``sha256`` and ``spec`` (the
        :class:`PersonSpec` as JSON).

    Raises:
        ValueError: arguments that :func:`check_request` refuses.
    """
    check_request(n, Path(out_dir), seed, voxel)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    people = []
    for i in range(n):
        spec = person(seed, i)
        mesh = build_person(spec, voxel)
        data = mesh.export(file_type="glb")
        name = f"person_{i:04d}.glb"
        atomic_write(out / name, data)
        people.append({"file": name, "faces": len(mesh.faces), "sha256": hashlib.sha256(data).hexdigest(),
                       "spec": asdict(spec)})
        if progress is not None:
            progress(i + 1)
    manifest = {"generator": "training.synth", "version": VERSION, "seed": seed, "n": n, "voxel": voxel,
                "libraries": {"numpy": np.__version__, "scipy": scipy.__version__,
                              "scikit-image": skimage.__version__, "trimesh": trimesh.__version__},
                "people": people}
    return atomic_write(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
