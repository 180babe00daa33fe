"""Training data from textured meshes: ``geneman data render MESHES -o DATA``.

Any folder of textured meshes (the generator's people of :mod:`training.synth`, or a user's scans:
GLB / glTF / OBJ / PLY with a base-colour texture or vertex colours) is framed as preprocess frames
a photo (:func:`evaluation.framing.frame_subject`: the reference view's mask box at ``fill`` of the
image, centred) and rendered unlit over white with the project's own rasteriser, from cameras drawn
from ``seed``, into the two layouts the trainers read:

``DATA/2d/`` (the 2D prior, :func:`training.datasets.CaptionedImages`): ``images/000000.png`` ... and
``metadata.jsonl``, one line per image ``{"file_name", "text", "subject", "crop", "elevation",
"azimuth"}`` (the layout of Hugging Face's ``imagefolder`` and of diffusers' text-to-image example).
Each image is a ``full`` body view, or the paper's crop augmentation: ``upper`` (half body) or
``closeup``, made by moving the camera towards the top of the person's silhouette, as the stages'
part cameras move closer; the caption names the crop and the side seen (front, side, back view).
``DATA/normal/`` and ``DATA/depth/`` hold the same views as the images the stage-2 guidance and the
ControlNet see (same ``metadata.jsonl`` rows and file names): camera-space normals as
:func:`priors.adapted.normal_image` maps them and min-max depth with near bright
(:func:`priors.adapted.depth_image`), black outside the person; the trainers read them as the
normal- and depth-adapted models' data and as the ControlNet's conditions.

``DATA/3d/`` (the 3D prior, :func:`training.datasets.ViewPairs`): ``views/<subject>/00.png`` ... from
orbit cameras at the reference distance and field of view (view 00 is the reference camera),
``views/<subject>/cameras.json`` (elevation, azimuth, distance, fovy of each view), and
``pairs.jsonl``: every ordered pair of views of a subject with its Zero-1-to-3 relative camera
(:func:`priors.prior_3d.relative_camera`: polar change, sin and cos of the azimuth change, distance
change).

``DATA/manifest.json``, written last, holds the seed, sizes, counts and each subject's source file and
sha256. Everything is written in a folder beside ``DATA`` and renamed at the end, so a failed or
interrupted render leaves no half-made ``DATA``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evaluation.framing import frame_subject, mask_box
from evaluation.meshes import SUFFIXES, load_mesh
from evaluation.truth import SubjectRenderer, to_uint8
from priors.adapted import depth_image, normal_image
from priors.prior_3d import relative_camera
from stages.render.cameras import Cameras, focal_length, look_at, orbit_cameras
from stages.render.export import atomic_write, png_bytes

FORMAT = 1
"""Version of the layout: a change the trainers must know of raises it."""
MANIFEST = "manifest.json"
"""Written last: a DATA folder without it is not a finished render."""
CROPS = ("full", "upper", "closeup")
"""2D crops: whole body, half body (top :data:`CROP_FRACTION` of the silhouette), close-up."""
CROP_FRACTION = {"full": 1.0, "upper": 0.55, "closeup": 0.25}
"""Fraction of the silhouette's height, from its top, that a crop's image spans."""
CROP_WORDS = {"full": "full body", "upper": "upper body", "closeup": "close-up"}
MAPS = ("normal", "depth")
"""The 2D views' other images, each in a folder of its own beside ``2d/``."""


@dataclass(frozen=True)
class RenderConfig:
    """What ``geneman data render`` draws and writes (its command-line options)."""

    size: int = 64
    """Image side, pixels."""
    views_2d: int = 8
    """2D images per subject."""
    crop_ratios: tuple[float, float, float] = (0.5, 0.3, 0.2)
    """Probabilities of the ``full``, ``upper`` and ``closeup`` crops (paper: crop augmentation)."""
    views_3d: int = 8
    """3D views per subject (view 00 is the reference camera); pairs: views_3d * (views_3d - 1)."""
    elevation_range: tuple[float, float] = (-20.0, 45.0)
    """Elevation of the sampled cameras, degrees: every elevation the stages' guidance views are drawn at
    (the presets' ``camera.elevation_range``: -10 to 45 for the SDS stages, -20 to 20 for stage 2), so
    that the priors are trained where they are asked."""
    distance: float = 3.0
    """Camera distance (the reference camera's, scene units)."""
    fovy: float = 20.0
    """Vertical field of view, degrees (the reference camera's)."""
    fill: float = 0.9
    """Long side of the reference view's silhouette box, fraction of the image (preprocess ``fill``)."""
    seed: int = 0
    """Seed of the cameras and crops."""


def mesh_files(folder: Path) -> list[Path]:
    """The mesh files of ``folder`` (not recursive), sorted by name.

    Raises:
        ValueError: one line, when the folder is missing, a file, or holds no mesh.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"{folder}: no such folder; give a folder of textured meshes ({', '.join(SUFFIXES)})")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; give the folder that holds the meshes")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not found:
        raise ValueError(f"{folder}: no mesh files in it (looked for {', '.join(SUFFIXES)})")
    return found


def check_request(meshes: Path, out: Path, cfg: RenderConfig) -> list[Path]:
    """The mesh files to render; ``ValueError`` (one line) for arguments that cannot work."""
    if cfg.size < 16 or cfg.size % 8:
        raise ValueError(f"image size {cfg.size} must be a multiple of 8, at least 16")
    if cfg.views_2d < 0 or cfg.views_3d < 0 or cfg.views_2d + cfg.views_3d == 0:
        raise ValueError(f"views: 2d {cfg.views_2d}, 3d {cfg.views_3d}; give at least one view, none negative")
    if cfg.views_3d == 1:
        raise ValueError("--views-3d 1 makes no pairs; give 0 (no 3D data) or at least 2")
    if len(cfg.crop_ratios) != len(CROPS) or min(cfg.crop_ratios) < 0 or sum(cfg.crop_ratios) <= 0:
        raise ValueError(f"crop ratios {list(cfg.crop_ratios)}: give three non-negative numbers (full, upper, "
                         "closeup) that do not all vanish")
    if not 0 <= cfg.seed < 2 ** 63:
        raise ValueError(f"seed {cfg.seed} is out of range; give 0 to 2^63 - 1")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; give a new folder for the data")
    return mesh_files(meshes)


# --- captions -----------------------------------------------------------------------------------

_NAMED = {"black": (0.1, 0.1, 0.1), "grey": (0.5, 0.5, 0.5), "white": (0.92, 0.92, 0.92), "red": (0.8, 0.15, 0.15),
          "orange": (0.9, 0.5, 0.15), "yellow": (0.9, 0.85, 0.2), "green": (0.2, 0.65, 0.25),
          "blue": (0.2, 0.3, 0.8), "purple": (0.55, 0.25, 0.7), "pink": (0.95, 0.6, 0.75),
          "brown": (0.45, 0.3, 0.15)}


def colour_name(rgb) -> str:
    """Nearest of a few colour words.

    Example:
        >>> colour_name((0.85, 0.1, 0.12)), colour_name((0.1, 0.2, 0.9))
        ('red', 'blue')
    """
    rgb = np.asarray(rgb, float)
    return min(_NAMED, key=lambda n: float(np.sum((np.asarray(_NAMED[n]) - rgb) ** 2)))


def person_caption(spec: dict) -> str:
    """Caption of a generated person from its :class:`training.synth.PersonSpec` (as JSON).

    Example:
        >>> from dataclasses import asdict
        >>> from training.synth import person
        >>> person_caption(asdict(person(0, 0)))[:9]
        'a photo o'
    """
    who = "child" if spec["height"] < 1.4 else "person"
    top = colour_name(spec["top"]["colour"])
    if spec["outfit"] == "dress":
        wear = f"a {top} dress"
    else:
        sleeves = {"long": "long-sleeved", "short": "short-sleeved", "none": "sleeveless"}[spec["sleeves"]]
        wear = f"a {top} {sleeves} shirt and {colour_name(spec['bottom']['colour'])} {spec['outfit']}"
    words = [f"a photo of a {who} wearing {wear}", f"{spec['hair']} {colour_name(spec['hair_colour'])} hair"]
    if spec["held"] != "none":
        words.append(f"holding a {spec['held']}")
    return ", ".join(words)


def captions_of(folder: Path) -> dict[str, str]:
    """Per-file captions of a mesh folder: a generator's ``manifest.json`` gives each person's (by its
    spec); other files are captioned ``a photo of a person``."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{manifest}: cannot read it ({e}); remove it or write it again with `geneman data synth`")
    if data.get("generator") != "training.synth":
        return {}
    return {p["file"]: person_caption(p["spec"]) for p in data.get("people", [])}


def side_word(azimuth: float) -> str:
    """``front``, ``side`` or ``back`` view of an azimuth (0: the reference camera, facing the subject).

    Example:
        >>> side_word(10.0), side_word(-100.0), side_word(200.0)
        ('front', 'side', 'back')
    """
    a = abs((azimuth + 180.0) % 360.0 - 180.0)
    return "front" if a <= 45 else "back" if a >= 135 else "side"


# --- cameras ------------------------------------------------------------------------------------

def crop_camera(cam: Cameras, mask: np.ndarray, fraction: float) -> Cameras:
    """The camera ``cam`` moved towards the top ``fraction`` of the silhouette ``mask`` ``[S, S]`` so that
    the image spans it (same field of view): the crop augmentation, rendered sharp."""
    if fraction >= 1.0:
        return cam
    size = mask.shape[0]
    y0, y1, x0, x1 = mask_box(mask)
    side = max(fraction * (y1 - y0), 8.0)
    rows = mask[y0:int(np.ceil(y0 + side))] > 0.5
    cols = np.nonzero(rows.any(0))[0]
    yc, xc = y0 + side / 2, (cols.min() + cols.max() + 1) / 2 if len(cols) else (x0 + x1) / 2
    f = float(focal_length(cam.fovy[0], size))
    c2w = cam.c2w[0].double()
    ray = c2w[:3, :3] @ torch.tensor([(xc - size / 2) / f, -(yc - size / 2) / f, -1.0], dtype=torch.float64)
    eye = c2w[:3, 3]
    forward = -c2w[:3, 2]
    d = float(cam.distance[0])
    target = eye + ray * (d / float(ray @ forward))  # on the plane through the look-at point
    new_eye = target - forward * d * side / size
    c2w_new = look_at(new_eye[None].float(), target[None].float())
    return Cameras(c2w_new, cam.fovy.clone(), cam.elevation.clone(), cam.azimuth.clone(),
                   torch.tensor([d * side / size]), target[None].float())


# --- rendering ----------------------------------------------------------------------------------

def _png(image: torch.Tensor) -> bytes:
    return png_bytes(to_uint8(image))


def map_images(views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A render's normal and depth images ``[B, H, W, 3]`` in [0, 1], as the stages hand them to the priors."""
    mask = views["mask"].permute(0, 3, 1, 2)
    normal = normal_image(views["normal"].permute(0, 3, 1, 2), mask)
    depth = depth_image(views["depth"].permute(0, 3, 1, 2), mask)
    return {"normal": normal.permute(0, 2, 3, 1), "depth": depth.permute(0, 2, 3, 1)}


def render_subject(path: Path, cfg: RenderConfig, rng: np.random.Generator) -> dict:
    """Render one mesh file: ``{"2d": [(pngs by kind, crop, elevation, azimuth)], "3d": [(png, camera)]}``,
    the kinds being ``rgb`` and :data:`MAPS`.

    Raises:
        ValueError: the file cannot be read or has no colour (one line naming it).
    """
    mesh = load_mesh(path)
    framing = frame_subject(mesh, canvas=cfg.size, fill=cfg.fill)
    renderer = SubjectRenderer(mesh, framing)
    s, lo, hi = cfg.size, *cfg.elevation_range
    out = {"2d": [], "3d": []}
    probs = np.asarray(cfg.crop_ratios, float) / sum(cfg.crop_ratios)
    for _ in range(cfg.views_2d):
        elev, azim = float(rng.uniform(lo, hi)), float(rng.uniform(-180.0, 180.0))
        crop = CROPS[int(rng.choice(len(CROPS), p=probs))]
        cam = orbit_cameras([elev], [azim], [cfg.distance], [cfg.fovy])
        if crop != "full":
            mask = renderer(cam, s, s)["mask"][0, ..., 0].numpy()
            if mask.max() <= 0.5:  # nothing seen (a degenerate scan): keep the full view
                crop = "full"
            else:
                cam = crop_camera(cam, mask, CROP_FRACTION[crop])
        views = renderer(cam, s, s)
        images = {"rgb": views["rgb"], **map_images(views)}
        out["2d"].append(({k: _png(v[0]) for k, v in images.items()}, crop, elev, azim))
    if cfg.views_3d:
        elev = np.concatenate([[0.0], rng.uniform(lo, hi, cfg.views_3d - 1)])
        azim = np.concatenate([[0.0], rng.uniform(0.0, 360.0, cfg.views_3d - 1)])
        cams = orbit_cameras(elev, azim, np.full(cfg.views_3d, cfg.distance), np.full(cfg.views_3d, cfg.fovy))
        rgb = renderer(cams, s, s)["rgb"]
        for i in range(cfg.views_3d):
            camera = {"elevation": round(float(elev[i]), 4), "azimuth": round(float(azim[i]), 4),
                      "distance": cfg.distance, "fovy": cfg.fovy}
            out["3d"].append((_png(rgb[i]), camera))
    return out


def pair_rows(subject: str, cameras: list[dict]) -> list[dict]:
    """Every ordered pair (source, target) of one subject's 3D views with its relative camera.

    Example:
        >>> rows = pair_rows("a", [{"file": "00.png", "elevation": 0.0, "azimuth": 0.0, "distance": 3.0},
        ...                        {"file": "01.png", "elevation": 0.0, "azimuth": 90.0, "distance": 3.0}])
        >>> rows[0]["source"], rows[0]["target"], rows[0]["camera"]
        ('views/a/00.png', 'views/a/01.png', [0.0, 1.0, 0.0, 0.0])
    """
    rows = []
    for a in cameras:
        for b in cameras:
            if a is b:
                continue
            cam = relative_camera(torch.tensor([b["elevation"]]), torch.tensor([b["azimuth"]]),
                                  torch.tensor([b["distance"]]), (a["elevation"], a["azimuth"], a["distance"]))
            rows.append({"source": f"views/{subject}/{a['file']}", "target": f"views/{subject}/{b['file']}",
                         "camera": [round(float(v), 6) + 0.0 for v in cam.flatten()]})
    return rows


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def render_dataset(meshes: str | Path, out: str | Path, cfg: RenderConfig = RenderConfig(),
                   progress: Callable[[int], None] | None = None) -> Path:
    """Render every mesh of ``meshes`` into ``out`` (see the module doc); returns the manifest's path.

    Raises:
        ValueError: one line naming the folder or the file that is wrong (empty folder, unreadable
            mesh, a mesh without colour, ``out`` not new); nothing is left at ``out`` then.
    """
    meshes, out = Path(meshes), Path(out)
    files = check_request(meshes, out, cfg)
    captions = captions_of(meshes)
    work = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng(cfg.seed)
    meta, pairs, subjects = [], [], []
    try:
        for i, path in enumerate(files):
            name = path.stem
            views = render_subject(path, cfg, rng)
            caption = captions.get(path.name, "a photo of a person")
            for pngs, crop, elev, azim in views["2d"]:
                file_name = f"images/{len(meta):06d}.png"
                for kind, png in pngs.items():
                    atomic_write(_made(work / ("2d" if kind == "rgb" else kind) / file_name), png)
                text = f"{caption}, {CROP_WORDS[crop]}, {side_word(azim)} view"
                meta.append({"file_name": file_name, "text": text,
                             "subject": name, "crop": crop, "elevation": round(elev, 4), "azimuth": round(azim, 4)})
            cams = []
            for j, (png, camera) in enumerate(views["3d"]):
                atomic_write(_made(work / "3d" / "views" / name / f"{j:02d}.png"), png)
                cams.append({"file": f"{j:02d}.png", **camera})
            if cams:
                cams_json = (json.dumps(cams, indent=1) + "\n").encode()
                atomic_write(work / "3d" / "views" / name / "cameras.json", cams_json)
                pairs += pair_rows(name, cams)
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            subjects.append({"name": name, "source": str(path), "sha256": sha, "caption": caption})
            if progress is not None:
                progress(i + 1)
        if meta:
            for folder in ("2d", *MAPS):
                atomic_write(work / folder / "metadata.jsonl", _jsonl(meta))
        if pairs:
            atomic_write(work / "3d" / "pairs.jsonl", _jsonl(pairs))
        manifest = {"generator": "training.render", "format": FORMAT, "seed": cfg.seed, "size": cfg.size,
                    "views_2d": cfg.views_2d, "views_3d": cfg.views_3d, "crop_ratios": list(cfg.crop_ratios),
                    "elevation_range": list(cfg.elevation_range), "distance": cfg.distance, "fovy": cfg.fovy,
                    "fill": cfg.fill, "meshes": str(meshes),
                    "counts": {"subjects": len(subjects), "images_2d": len(meta),
                               "views_3d": len(subjects) * cfg.views_3d, "pairs_3d": len(pairs)},
                    "subjects": subjects}
        atomic_write(work / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        if out.is_dir():
            out.rmdir()  # empty (check_request)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out / MANIFEST


def _made(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
