"""``geneman eval OUT --photo PHOTO``: the paper's evaluation protocol on a finished run, into ``OUT/eval.json``.

What is compared (the protocol itself: :mod:`evaluation.protocol`):

- **The avatar**: the last stage's Result, loaded with that stage module's ``Result.load`` from
  ``OUT/<its folder>/result/`` once run.json says the stage is done, rendered from the 120 views.
- **The photo, in the render's frame**: the peers compare the reference render with the
  preprocessed, recentred photo on a white background. When PHOTO is the run's input (its sha256 is
  run.json's ``input.sha256``), that is the run's own preprocess output, ``OUT/00_preprocess/result/``
  (``Inputs.rgb``, the image stage 1 fitted its reference camera to), so the framing is the run's
  by construction. When PHOTO is another file, eval warns, says so in eval.json (``photo.matches_run``
  false) and preprocesses PHOTO with the run's own preprocess settings (mask from PHOTO's alpha
  channel or segmentation; no depth, normal or landmarks), so that it is framed as the run's input was.
- **Weights**: CLIP (``priors.clip_eval``) is needed unless ``--no-clip``: missing, eval stops
  before rendering with the id, file and folder expected (exit 2), as a run does. LPIPS missing:
  ``lpips_ref`` is null and a note says why; PSNR and CLIP are still computed.

eval.json holds ``views``, ``psnr_ref``, ``lpips_ref``, ``clip_similarity`` (the mean), ``clip_per_view``
(view 0 first), ``protocol`` (cameras, resolution, how each number is made), ``models`` (ids),
``photo``, ``notes`` and ``device``; numbers that JSON cannot hold (an infinite PSNR: the reference
view equals the photo) are null with a note. It is written atomically and only at the end: an error
leaves no eval.json (nor changes an older one).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from evaluation import protocol
from pipeline.config import RunConfig
from pipeline.errors import InputError
from pipeline.run import preprocess
from pipeline.run.export import last_result_folder, verified
from pipeline.run.models import MissingWeights, resolve_device
from pipeline.run.progress import Progress
from pipeline.run.runner import DEFAULT_STAGES, StageSpec
from pipeline.run.store import PREPROCESS, RunStore, atomic_write_bytes, now, sha256_file
from pipeline.run.targets import check_writable
from priors.clip import CLIPImageEncoder
from priors.lpips import LPIPS
from priors.weights import all_weights, check_one, missing_error
from stages.inputs import Inputs

log = logging.getLogger("geneman")

EVAL_FILE = "eval.json"


@dataclass
class EvalOptions:
    """How ``geneman eval`` runs (the protocol's cameras are fixed)."""

    resolution: int = 512
    """Side of the square renders; PSNR is measured at this size."""
    clip: bool = True
    """Measure the CLIP similarity (needs the ``clip`` weight); False: ``--no-clip``."""
    batch: int = protocol.BATCH
    """Views rendered at once."""
    quiet: bool = False
    """No progress lines."""


def reference_inputs(store: RunStore, photo: Path, cfg: RunConfig) -> tuple[Inputs, dict]:
    """The preprocessed photo to compare with, and eval.json's ``photo`` entry (see the module docstring).

    Raises:
        InputError: PHOTO is unreadable or has no person; the run's preprocess result is unreadable.
        DamagedResult: that result does not match its DIGEST.json.
    """
    preprocess.read_photo(photo, cfg.preprocess.max_pixels)  # one line, exit 2, when it is no image
    sha = sha256_file(photo)
    recorded = store.manifest.input.get("sha256")
    entry = {"path": str(photo.resolve()), "sha256": sha, "matches_run": sha == recorded}
    if sha == recorded:
        folder = store.folder(PREPROCESS) / "result"
        verified(store, folder)
        try:
            inputs = Inputs.load(folder)
        except Exception as e:  # noqa: BLE001 - any unreadable file: one line
            raise InputError(f"{folder} (the run's preprocessed photo) cannot be read ({type(e).__name__}: {e}); "
                             f"redo it with `geneman resume {store.root} --from-stage preprocess`") from None
        return inputs, {**entry, "reference": f"{PREPROCESS}/result (the run's preprocessed input)"}
    log.warning("%s is not the photo this run was made from (sha256 %s, run.json: %s); comparing the avatar with "
                "it, preprocessed with the run's preprocess settings", photo, sha[:12], str(recorded)[:12])
    settings = replace(cfg.preprocess, depth_normal=False, landmarks=False)
    inputs = preprocess.run(photo, None, settings, prompt="")
    return inputs, {**entry, "reference": "PHOTO preprocessed with the run's preprocess settings"}


def on_device(result: Any, device: torch.device) -> Any:
    """A dataclass Result with its tensors on ``device`` (anything else as it is)."""
    if not is_dataclass(result):
        return result
    moved = {f.name: getattr(result, f.name).to(device) for f in fields(result)
             if isinstance(getattr(result, f.name), torch.Tensor)}
    return replace(result, **moved)


def load_networks(cfg: RunConfig, options: EvalOptions, device: torch.device, notes: list[str]):
    """``(clip, lpips)``: CLIP unless ``--no-clip`` (missing: :class:`MissingWeights`), LPIPS when present."""
    specs = all_weights(cfg.priors)
    clip = None
    if options.clip:
        row = check_one(cfg.priors, specs["clip"])
        if not row.found:
            raise MissingWeights(f"{missing_error(row)}; or pass --no-clip to skip the CLIP similarity")
        clip = CLIPImageEncoder.from_folder(row.folder, device)
    else:
        notes.append("clip_similarity: not measured (--no-clip)")
    row = check_one(cfg.priors, specs["lpips"])
    if not row.found:
        note = f"lpips_ref: not measured, {missing_error(row)}"
        log.warning("%s", note)
        notes.append(note)
        return clip, None
    return clip, LPIPS.from_pretrained(cfg.priors, device)


def protocol_entry(options: EvalOptions) -> dict:
    """eval.json's ``protocol``: the cameras and how each number is made."""
    return {
        "views": protocol.VIEWS, "azimuth_deg": f"i * 360 / {protocol.VIEWS}, i = 0..{protocol.VIEWS - 1}",
        "elevation_deg": protocol.ELEVATION, "distance": protocol.DISTANCE, "fovy_deg": protocol.FOVY,
        "reference_view": 0, "resolution": options.resolution, "render": "unlit albedo over white",
        "reference": "the preprocessed photo (recentred canvas, white background), area-resized to the resolution",
        "psnr": "view 0 vs the reference, whole image, data range 1",
        "lpips": f"VGG16 v0.1, view 0 vs the reference, both area-resized to {protocol.LPIPS_SIZE}",
        "clip": "cosine of CLIP image embeddings, each view vs the reference (shorter side to the model's size, "
                "bicubic, centre crop, CLIP mean/std)",
    }


def evaluate_run(root: Path, photo: Path, cfg: RunConfig, options: EvalOptions = EvalOptions(),
                 stages: Sequence[StageSpec] = DEFAULT_STAGES) -> dict:
    """Evaluate the finished run in ``root`` against ``photo``; write and return eval.json's content.

    Everything that can fail on bad input (the run folder, its last stage, the results read, checked
    against their DIGEST.json, PHOTO, the CLIP weight) fails before anything is rendered, and nothing is
    written unless every number was made.
    """
    store = RunStore(root)
    store.load()
    check_writable(store.root, [EVAL_FILE])  # before anything renders
    last, folder = last_result_folder(store, stages)
    inputs, photo_entry = reference_inputs(store, Path(photo), cfg)
    device, notes = resolve_device(cfg.device), []
    clip, lpips = load_networks(cfg, options, device, notes)
    result = on_device(last.module.Result.load(folder), device)
    reference = protocol.reference_image(inputs, options.resolution, device)
    progress = Progress("eval", protocol.VIEWS, cfg.progress_every_s, options.quiet, unit="view")
    progress.start(0)
    try:
        scores = protocol.evaluate(result, reference, options.resolution, clip, lpips, batch=options.batch,
                                   on_views=lambda n: progress.update(n, {}))
    finally:
        progress.close()
    if scores.psnr_ref == float("inf"):
        notes.append("psnr_ref: null because the reference view equals the photo exactly (PSNR is infinite)")
    report = {
        "views": protocol.VIEWS, "psnr_ref": protocol.finite_or_none(scores.psnr_ref),
        "lpips_ref": scores.lpips_ref, "clip_similarity": scores.clip_similarity, "clip_per_view": scores.clip_per_view,
        "protocol": protocol_entry(options),
        "models": {"clip": cfg.priors.clip_eval if clip is not None else None,
                   "lpips": cfg.priors.lpips if lpips is not None else None},
        "photo": photo_entry, "result": f"{last.folder}/result ({last.name})", "device": str(device),
        "created": now(), "notes": notes,
    }
    atomic_write_bytes(store.root / EVAL_FILE, (json.dumps(report, indent=2, allow_nan=False) + "\n").encode())
    return report
