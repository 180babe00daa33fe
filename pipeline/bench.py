"""``geneman bench``: the stages measured without weights, on a ground-truth mesh.

The subject is framed as preprocess frames a photo, its reference photo (RGBA) is rendered from
the reference camera, and a normal run folder is made from it through :func:`pipeline.run.session.start`,
with two things swapped in: the true depth and normal maps in place of Sapiens', and the oracle
guidance (:mod:`evaluation.oracle`) in place of the diffusion priors. Every stage that is built
runs exactly as in ``geneman run``. Each stage's mesh is mapped back into the subject's own frame
and units and compared with it; ``bench.json`` holds the figures, ``recon.glb`` the result.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from PIL import Image

from evaluation.framing import Framing, frame_subject
from evaluation.meshes import SubjectMesh, load_mesh
from evaluation.metrics import geometry_metrics, psnr, ssim
from evaluation.oracle import OraclePriors
from evaluation.silhouettes import reference_iou, truth_masks, turntable_iou
from evaluation.subjects import SUBJECTS, write_subject
from evaluation.truth import SubjectRenderer, normalised_depth, to_uint8
from pipeline.config import RunConfig
from pipeline.errors import InputError
from pipeline.report import write as page
from pipeline.run import models, session
from pipeline.run.models import resolve_device
from pipeline.run.runner import DEFAULT_STAGES, StageSpec
from pipeline.run.store import atomic_write_bytes
from pipeline.run.targets import check_writable
from priors.lpips import LPIPS
from priors.weights import all_weights, check_one
from stages.render.cameras import reference_camera, turntable
from stages.render.export import to_trimesh
from stages.textured_mesh import TexturedMesh

log = logging.getLogger("geneman")

GEOMETRY_STAGES = ("geometry_init", "geometry_sculpt")
GUIDANCE = ("oracle", "priors")
"""``oracle``: the subject's own renders answer every guidance call; ``priors``: the preset's own priors and
depth/normal source, exactly as ``geneman run`` (the truth only scores)."""
SYNTH = "synth:"
RUN = "run"
REFERENCE = "reference.png"
SUBJECT = "subject.glb"
WRITTEN = ("bench.json", "recon.glb", REFERENCE, SUBJECT, "report.html")
"""The files a bench writes into OUT (beside the run folder ``OUT/run/``)."""
TURNTABLE_VIEWS = 120


def built_stages() -> tuple[StageSpec, ...]:
    """The stages that exist (a module with ``run``); the others are left out of the bench."""
    return tuple(s for s in DEFAULT_STAGES if hasattr(s.module, "run"))


def synth_spec(subject: str) -> tuple[int, int]:
    """``(seed, index)`` of ``synth:SEED:INDEX``, or an InputError naming what is wrong."""
    parts = subject[len(SYNTH):].split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"subject {subject}: give synth:SEED:INDEX with two whole numbers (person INDEX of "
                         "`geneman data synth --seed SEED`), e.g. synth:300:4")
    seed, index = map(int, parts)
    if seed >= 2**63 or index >= 2**31:
        raise InputError(f"subject {subject}: seed must be below 2^63 and index below 2^31")
    return seed, index


def subject_file(subject: str, out: Path) -> Path:
    """The mesh file to bench: ``subject`` itself, a built-in subject's name or a generated person
    (``synth:SEED:INDEX``, as ``geneman data synth`` makes it) written to ``OUT/subject.glb``."""
    path = Path(subject)
    if path.exists():
        return path
    if subject.startswith(SYNTH):
        from training.synth import build_person, person

        seed, index = synth_spec(subject)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / SUBJECT, build_person(person(seed, index)).export(file_type="glb"))
        return out / SUBJECT
    if subject in SUBJECTS:
        out.mkdir(parents=True, exist_ok=True)
        return write_subject(subject, out / SUBJECT)
    raise InputError(f"subject {subject}: no such file, not a built-in subject ({', '.join(SUBJECTS)}) and not "
                     "synth:SEED:INDEX; give a GLB, OBJ or PLY mesh")


def load_subject(path: Path) -> SubjectMesh:
    """The subject mesh, checked by :func:`evaluation.meshes.load_mesh` before anything is made of it
    (finite coordinates, an extent, face indices in range, textures bounded), or an InputError naming the
    file and what is wrong."""
    try:
        return load_mesh(path)
    except ValueError as e:
        raise InputError(str(e)) from None


def frame(mesh: SubjectMesh, path: Path, cfg: RunConfig) -> Framing:
    """The subject framed as preprocess frames a photo, or an InputError when the reference camera cannot
    see it."""
    try:
        return frame_subject(mesh, cfg.preprocess.canvas, cfg.preprocess.fill)
    except ValueError as e:
        raise InputError(f"{path}: {e}; is it +Y up and facing +Z?") from None


def reference_photo(renderer: SubjectRenderer, cfg: RunConfig, out: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Render the reference photo (RGBA PNG, white under the person) at the preprocess canvas, and the
    true depth (normalised as preprocess expects, 1 = near) and camera-space normal maps."""
    side = cfg.preprocess.canvas
    maps = renderer(reference_cam(cfg), side, side)
    mask = maps["mask"][0, ..., 0]
    rgba = torch.cat([maps["rgb"][0], mask[..., None]], dim=-1)
    path = out / REFERENCE
    Image.fromarray(to_uint8(rgba)).save(path)
    inside = mask > 0.5
    normal = torch.nn.functional.normalize(maps["normal"][0], dim=-1) * inside[..., None]
    truth = {"depth": normalised_depth(maps["depth"][0, ..., 0], inside).numpy(), "normal": normal.numpy()}
    return path, truth


def reference_cam(cfg: RunConfig):
    """The reference camera of the photo (stage 1's, as :func:`reference_photo` renders it)."""
    c = cfg.geometry_init.camera
    return reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy)


def photo_mask(run: Path) -> torch.Tensor:
    """The photo's ``[H, W]`` mask in [0, 1] as preprocess made it (what every stage was given)."""
    return torch.from_numpy(np.asarray(Image.open(run / "00_preprocess" / "result" / "mask.png").convert("L"),
                                       dtype=np.float32) / 255.0)


def true_depth_normal(truth: dict[str, np.ndarray]):
    """A preprocess depth/normal hook that returns the true maps of the reference photo."""
    def hook(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if rgb.shape[:2] != truth["depth"].shape:
            raise InputError(f"bench: the photo is {rgb.shape[:2]}, the true maps {truth['depth'].shape}")
        return truth["depth"], truth["normal"]
    return hook


def result_mesh(result: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A stage Result's mesh ``(verts [V, 3], faces [F, 3])`` in the scene frame, or None (no mesh)."""
    verts = getattr(result, "verts", None)
    return None if verts is None else (verts, result.faces)


@dataclass
class Silhouettes:
    """What a stage's silhouettes are scored against: the truth's turntable masks and, from the reference
    camera, the photo's mask as preprocess made it."""

    truth: torch.Tensor
    photo_mask: torch.Tensor
    camera: Any

    def figures(self, verts: torch.Tensor, faces: torch.Tensor) -> dict[str, float]:
        """``iou``, ``iou_back``, ``iou_min`` (turntable, against the truth) and ``iou_ref`` (against the photo)."""
        out = turntable_iou(verts, faces, self.truth)
        out["iou_ref"] = reference_iou(verts, faces, self.photo_mask, self.camera)
        return out


def stage_report(run: Path, spec: StageSpec, subject: SubjectMesh, framing: Framing, seconds: float,
                 silhouettes: Silhouettes | None = None) -> dict | None:
    """Geometry figures of one stage's mesh against the subject, in the subject's frame and units, and its
    silhouette IoUs (``silhouettes``)."""
    folder = run / spec.folder / "result"
    if not folder.is_dir():
        return None
    shape = result_mesh(spec.module.Result.load(folder))
    if shape is None:
        return {"seconds": round(seconds, 1)}
    verts, faces = shape
    mesh = trimesh.Trimesh(framing.to_subject(verts.double().numpy()), faces.numpy(), process=False)
    figures: dict[str, Any] = geometry_metrics(mesh, trimesh.Trimesh(subject.vertices, subject.faces, process=False))
    if silhouettes is not None:
        figures.update(silhouettes.figures(verts, faces))
    figures["seconds"] = round(seconds, 1)
    return figures


def appearance_report(result: TexturedMesh, renderer: SubjectRenderer, size: int, lpips=None,
                      n_views: int = TURNTABLE_VIEWS) -> dict[str, Any]:
    """PSNR and SSIM (LPIPS too when given) of the avatar's unlit albedo against the truth's on the
    evaluation turntable (``n_views`` views, elevation 0, distance 3, fovy 20, white background): the
    mean, per view, and the means of the front half (views within 90 degrees of the reference camera)
    and of the back half."""
    cams = turntable(n_views)
    per_psnr, per_ssim, per_lpips = [], [], []
    with torch.no_grad():
        for view in range(n_views):
            cam = cams[view:view + 1]
            ours, gt = result.render(cam, size, size)["rgb"], renderer(cam, size, size)["rgb"]
            per_psnr.append(psnr(ours, gt))
            per_ssim.append(ssim(ours, gt))
            if lpips is not None:
                per_lpips.append(float(lpips(ours.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2))))
    front = [i for i in range(n_views) if min(i, n_views - i) * 360.0 / n_views < 90.0]
    back = [i for i in range(n_views) if i not in front]
    mean = lambda xs, ids=None: float(np.mean([xs[i] for i in (ids if ids is not None else range(len(xs)))]))  # noqa: E731
    report = {"psnr": mean(per_psnr), "ssim": mean(per_ssim), "psnr_front": mean(per_psnr, front),
              "psnr_back": mean(per_psnr, back), "ssim_front": mean(per_ssim, front),
              "ssim_back": mean(per_ssim, back), "views": n_views, "size": size,
              "per_view": {"psnr": per_psnr, "ssim": per_ssim}}
    if per_lpips:
        report["lpips"] = mean(per_lpips)
        report["per_view"]["lpips"] = per_lpips
    return report


def recon_glb(result: Any, framing: Framing, out: Path) -> Path:
    """The last stage's Result (its mesh) in the subject's frame and units as ``OUT/recon.glb`` (textured
    once the texture stages ran; vertex colours before)."""
    path = out / "recon.glb"
    if isinstance(result, TexturedMesh):
        verts, faces, uvs = result.split()
        verts = torch.as_tensor(framing.to_subject(verts.double().numpy()), dtype=torch.float32)
        mesh = to_trimesh(verts, faces, uvs, result.texture, rotate=False)  # to_subject gave glTF axes
        atomic_write_bytes(path, mesh.export(file_type="glb"))
        return path
    mesh = result.to_trimesh()
    mesh.vertices = framing.to_subject(np.asarray(mesh.vertices, dtype=np.float64))
    atomic_write_bytes(path, mesh.export(file_type="glb"))
    return path


def lpips_loader(cfg: RunConfig, device: torch.device):
    """A loader of the real LPIPS network (its weights resolved as a run resolves them), or None when they
    are not there: the texture stage and the appearance figures then go without it."""
    if not check_one(cfg.priors, all_weights(cfg.priors)["lpips"]).found:
        log.info("bench: LPIPS weights not found; appearance without LPIPS (see `geneman weights check`)")
        return None
    return lambda: LPIPS.from_pretrained(cfg.priors, device)


def run_bench(subject: str, out: Path, cfg: RunConfig, quiet: bool = False,
              from_stage: str | None = None, guidance: str = "oracle", until: str | None = None) -> dict[str, Any]:
    """Bench the built stages on ``subject`` (a mesh file, a built-in name or ``synth:SEED:INDEX``) into
    ``out`` under the ``guidance`` (:data:`GUIDANCE`); a bench folder that has run continues (``from_stage``:
    redone from that stage on, the earlier stages kept). Each stage's ``seconds`` is from the run that made
    its result; ``wall_s`` is this call's. ``until``: run and score the stages up to that one only (e.g.
    ``geometry_sculpt`` to try geometry settings); the appearance figures need the last stage."""
    t0 = time.monotonic()
    out = Path(out)
    if guidance not in GUIDANCE:
        raise InputError(f"--guidance {guidance}: give one of {', '.join(GUIDANCE)}")
    check_writable(out, WRITTEN, [RUN, "report_files"])
    stages = built_stages()
    if until is not None:
        names = [s.name for s in stages]
        if until not in names:
            raise InputError(f"--until {until}: give one of {', '.join(names)}")
        stages = stages[:names.index(until) + 1]
    if subject.startswith(SYNTH):
        synth_spec(subject)  # a bad spec is refused before any network is built
    if guidance == "priors":  # the preset's networks, their weights checked before anything is written
        priors, depth_normal = models.prepare(cfg, stages)
    path = subject_file(subject, out)
    mesh = load_subject(path)
    framing = frame(mesh, path, cfg)
    out.mkdir(parents=True, exist_ok=True)
    renderer = SubjectRenderer(mesh, framing)
    photo, truth = reference_photo(renderer, cfg, out)
    device = resolve_device(cfg.device)
    loader = lpips_loader(cfg, device)
    oracle = OraclePriors(renderer, device=device, lpips=loader)
    if guidance == "oracle":
        session.start(photo, out / RUN, cfg, stages=stages, priors=oracle, depth_normal=true_depth_normal(truth),
                      quiet=quiet, from_stage=from_stage)
    else:  # as `geneman run` would: the preset's priors and its depth/normal source on the rendered photo
        session.start(photo, out / RUN, cfg, stages=stages, priors=priors, depth_normal=depth_normal, quiet=quiet,
                      from_stage=from_stage)
    manifest = json.loads((out / RUN / "run.json").read_text())
    report: dict[str, Any] = {"subject": str(path), "guidance": guidance, "framing": framing.to_dict(),
                              "stages": {}}
    silhouettes = Silhouettes(truth_masks(renderer), photo_mask(out / RUN), reference_cam(cfg))
    for spec in stages:
        seconds = float(manifest["stages"].get(spec.name, {}).get("elapsed_s", 0.0))
        figures = stage_report(out / RUN, spec, mesh, framing, seconds, silhouettes)
        if figures is not None:
            report["stages"][spec.name] = figures
    last_geometry = [s for s in stages if s.name in GEOMETRY_STAGES][-1]
    report.update({k: v for k, v in report["stages"][last_geometry.name].items() if k != "seconds"})
    final = report["stages"].get(stages[-1].name, {})
    report.update({f"final_{k}": final[k] for k in ("iou", "iou_back", "iou_min", "iou_ref") if k in final})
    last = stages[-1].module.Result.load(out / RUN / stages[-1].folder / "result")
    if isinstance(last, TexturedMesh):
        lpips = oracle.lpips if loader is not None else None
        report.update(appearance_report(last, renderer, cfg.preprocess.canvas, lpips))
    recon_glb(last, framing, out)
    report["wall_s"] = round(time.monotonic() - t0, 1)
    atomic_write_bytes(out / "bench.json", (json.dumps(report, indent=2) + "\n").encode())
    page.refresh(out / RUN, bench_root=out)
    return report
