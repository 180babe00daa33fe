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
from evaluation.subjects import SUBJECTS, write_subject
from evaluation.truth import SubjectRenderer, normalised_depth, to_uint8
from pipeline.config import RunConfig
from pipeline.errors import InputError
from pipeline.report import write as page
from pipeline.run import session
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
RUN = "run"
REFERENCE = "reference.png"
SUBJECT = "subject.glb"
WRITTEN = ("bench.json", "recon.glb", REFERENCE, SUBJECT, "report.html")
"""The files a bench writes into OUT (beside the run folder ``OUT/run/``)."""
TURNTABLE_VIEWS = 120


def built_stages() -> tuple[StageSpec, ...]:
    """The stages that exist (a module with ``run``); the others are left out of the bench."""
    return tuple(s for s in DEFAULT_STAGES if hasattr(s.module, "run"))


def subject_file(subject: str, out: Path) -> Path:
    """The mesh file to bench: ``subject`` itself, or a built-in subject's name written to ``OUT/subject.glb``."""
    path = Path(subject)
    if path.exists():
        return path
    if subject in SUBJECTS:
        out.mkdir(parents=True, exist_ok=True)
        return write_subject(subject, out / SUBJECT)
    raise InputError(f"subject {subject}: no such file, and not a built-in subject ({', '.join(SUBJECTS)}); "
                     "give a GLB, OBJ or PLY mesh")


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
    c = cfg.geometry_init.camera
    cam = reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy)
    side = cfg.preprocess.canvas
    maps = renderer(cam, side, side)
    mask = maps["mask"][0, ..., 0]
    rgba = torch.cat([maps["rgb"][0], mask[..., None]], dim=-1)
    path = out / REFERENCE
    Image.fromarray(to_uint8(rgba)).save(path)
    inside = mask > 0.5
    normal = torch.nn.functional.normalize(maps["normal"][0], dim=-1) * inside[..., None]
    truth = {"depth": normalised_depth(maps["depth"][0, ..., 0], inside).numpy(), "normal": normal.numpy()}
    return path, truth


def true_depth_normal(truth: dict[str, np.ndarray]):
    """A preprocess depth/normal hook that returns the true maps of the reference photo."""
    def hook(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if rgb.shape[:2] != truth["depth"].shape:
            raise InputError(f"bench: the photo is {rgb.shape[:2]}, the true maps {truth['depth'].shape}")
        return truth["depth"], truth["normal"]
    return hook


def stage_report(run: Path, spec: StageSpec, subject: SubjectMesh, framing: Framing, seconds: float) -> dict | None:
    """Geometry figures of one stage's mesh against the subject, in the subject's frame and units."""
    folder = run / spec.folder / "result"
    if not folder.is_dir():
        return None
    result = spec.module.Result.load(folder)
    verts = getattr(result, "verts", None)
    if verts is None:
        return {"seconds": round(seconds, 1)}
    mesh = trimesh.Trimesh(framing.to_subject(verts.double().numpy()), result.faces.numpy(), process=False)
    ref = trimesh.Trimesh(subject.vertices, subject.faces, process=False)
    figures = geometry_metrics(mesh, ref)
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
              from_stage: str | None = None) -> dict[str, Any]:
    """Bench the built stages on ``subject`` (a mesh file or a built-in name) into ``out``; a bench folder
    that has run continues (``from_stage``: redone from that stage on, the earlier stages kept). Each
    stage's ``seconds`` is from the run that made its result; ``wall_s`` is this call's."""
    t0 = time.monotonic()
    out = Path(out)
    check_writable(out, WRITTEN, [RUN, "report_files"])
    path = subject_file(subject, out)
    mesh = load_subject(path)
    framing = frame(mesh, path, cfg)
    out.mkdir(parents=True, exist_ok=True)
    renderer = SubjectRenderer(mesh, framing)
    photo, truth = reference_photo(renderer, cfg, out)
    stages = built_stages()
    device = resolve_device(cfg.device)
    loader = lpips_loader(cfg, device)
    priors = OraclePriors(renderer, device=device, lpips=loader)
    session.start(photo, out / RUN, cfg, stages=stages, priors=priors, depth_normal=true_depth_normal(truth),
                  quiet=quiet, from_stage=from_stage)
    manifest = json.loads((out / RUN / "run.json").read_text())
    report: dict[str, Any] = {"subject": str(path), "framing": framing.to_dict(), "stages": {}}
    for spec in stages:
        seconds = float(manifest["stages"].get(spec.name, {}).get("elapsed_s", 0.0))
        figures = stage_report(out / RUN, spec, mesh, framing, seconds)
        if figures is not None:
            report["stages"][spec.name] = figures
    last_geometry = [s for s in stages if s.name in GEOMETRY_STAGES][-1]
    report.update({k: v for k, v in report["stages"][last_geometry.name].items() if k != "seconds"})
    last = stages[-1].module.Result.load(out / RUN / stages[-1].folder / "result")
    if isinstance(last, TexturedMesh):
        lpips = priors.lpips if loader is not None else None
        report.update(appearance_report(last, renderer, cfg.preprocess.canvas, lpips))
    recon_glb(last, framing, out)
    report["wall_s"] = round(time.monotonic() - t0, 1)
    atomic_write_bytes(out / "bench.json", (json.dumps(report, indent=2) + "\n").encode())
    page.refresh(out / RUN, bench_root=out)
    return report
