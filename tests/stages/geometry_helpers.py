"""Shared by the stage tests: tiny sizes for any preset, inputs of a generated subject, and a
checkpointer that records the loss dicts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from evaluation.framing import frame_subject
from evaluation.subjects import make_subject
from evaluation.truth import reference_inputs
from pipeline.config import load_config
from stages.loop import ever_active, loss_names, weights_at

TINY = {
    "geometry_init": ["resolutions=[32,32]", "samples_per_ray=16", "mesh_resolution=32", "grid.log2_hashmap_size=12",
                      "occupancy_resolution=16", "encode_resolution=0", "ray_chunk=4096", "smooth_points=256",
                      "preview_every=0", "mesh_level=1.0",
                      "mesh_level_search=[]"],
    "geometry_sculpt": ["resolution=32", "tet_grid=32", "grid.log2_hashmap_size=12", "sdf_points=500",
                        "init_steps=20", "init_points=2000", "encode_resolution=0", "preview_every=0"],
    "texture_coarse": ["resolution=32", "grid.log2_hashmap_size=12", "encode_resolution=0", "preview_every=0"],
    "texture_refine": ["resolution=32", "texture_size=32", "n_views=4", "encode_resolution=0", "preview_every=0",
                       "erode_px=1", "xatlas_timeout=60", "ddim_stride=200"],
}


def tiny_config(preset: str, extra: list[str] = ()):
    """``preset`` with its loss weights and schedules as they are and every size made tiny."""
    sets = [f"{stage}.{s}" for stage, items in TINY.items() for s in items] + ["preprocess.canvas=64"]
    return load_config(preset, None, sets + list(extra))


def subject_inputs(name: str = "half_body", canvas: int = 64):
    """What preprocess makes of a generated subject's photo (true depth and normal)."""
    subject = make_subject(name)
    return reference_inputs(subject, frame_subject(subject, canvas), canvas)


@dataclass
class RecordingCheckpoint:
    """A ``Checkpoint`` that starts at ``start`` and records each step's losses (no files but previews)."""

    folder: Path
    start: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)

    def resume(self, objects) -> int:
        return self.start

    def step_done(self, step, losses, objects) -> None:
        self.losses.append({k: float(torch.as_tensor(v)) for k, v in losses.items()})

    def check_stop(self) -> None:
        pass


def walk_preset_losses(module, stage: str, preset: str, inputs, previous, priors, tmp_path: Path) -> None:
    """Run ``module.run`` for a window of steps at the start of ``preset``'s ``stage`` schedule and, when a
    loss weight changes over it, at its end (where late ramps are on); assert that every loss whose
    weight is non-zero at some step was computed, finite (a loss without a weight would fail in
    weighted_sum)."""
    cfg = getattr(tiny_config(preset), stage)
    window = 2 * cfg.n_ref
    constant = all(weights_at(cfg, 0) == weights_at(cfg, step) for step in (cfg.steps // 2, cfg.steps - 1))
    seen: set[str] = set()
    for start in (0,) if constant else (0, cfg.steps - window):
        ckpt = RecordingCheckpoint(tmp_path / f"{start}" / "ckpt", start=start)
        sub = getattr(tiny_config(preset, [f"{stage}.steps={start + window}"]), stage)
        module.run(sub, inputs, previous, priors, ckpt)
        assert len(ckpt.losses) == window
        for losses in ckpt.losses:
            seen |= set(losses)
            assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    wanted = {name for name in loss_names(cfg) if ever_active(cfg, name)}
    assert wanted <= seen, f"{preset} {stage}: weighted but never computed: {sorted(wanted - seen)}"
