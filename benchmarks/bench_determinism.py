"""What the deterministic CPU kernels cost (``stages.loop.deterministic``), and that they make two runs equal.

Run:  .venv/bin/python benchmarks/bench_determinism.py [--steps 10] [--rounds 3] [--subject half_body]

Stages 1 and 2 at the ``cpu`` preset's sizes (tiny priors, so the networks the kernels touch, the
renderers, the hash grids and the mesh ops, are what is timed) on a generated subject at the preset's
canvas, 2 threads. Each round runs each stage for ``--steps`` steps once with PyTorch's deterministic
algorithms on and once off, alternating (so a busy machine slows both alike); the table gives the median
seconds per step of each, their ratio, and whether the runs with the same switch gave equal results
(stage 2 from the same stage-1 mesh; a 2-thread run without the kernels is not expected to).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.framing import frame_subject  # noqa: E402
from evaluation.subjects import make_subject  # noqa: E402
from evaluation.truth import reference_inputs  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from priors import tiny  # noqa: E402
from priors.registry import PriorSet  # noqa: E402
from stages import geometry_init, geometry_sculpt  # noqa: E402
from stages.loop import deterministic  # noqa: E402


class TimedCheckpoint:
    """A fresh-start ``Checkpoint`` that notes when each step ends."""

    def __init__(self, folder: Path):
        self.folder, self.ends = folder, []

    def resume(self, objects) -> int:
        self.ends.append(time.perf_counter())
        return 0

    def check_stop(self) -> None:
        pass

    def step_done(self, step, losses, objects) -> None:
        self.ends.append(time.perf_counter())


def run_stage(module, cfg, inputs, previous, priors, folder: Path, on: bool):
    """The stage's result and its seconds per loop step (the steps after the first, whose set-up differs)."""
    torch.manual_seed(1)
    ckpt = TimedCheckpoint(folder)
    if on:
        with deterministic(torch.device("cpu")):
            result = module.run(cfg, inputs, previous, priors, ckpt)
    else:
        result = module.run(cfg, inputs, previous, priors, ckpt)
    steps = ckpt.ends[2:]
    return result, (steps[-1] - steps[0]) / max(len(steps) - 1, 1)


def same(a, b) -> bool:
    return a.faces.shape == b.faces.shape and torch.equal(a.verts, b.verts) and all(
        torch.equal(a.state[k], b.state[k]) for k in a.state)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--subject", default="half_body")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    priors = PriorSet(tiny.write_weights(tmp / "weights"), "cpu")
    base = load_config("cpu", None, [])
    canvas = base.preprocess.canvas
    subject = make_subject(args.subject)
    inputs = reference_inputs(subject, frame_subject(subject, canvas), canvas)
    cfg = load_config("cpu", None, [f"geometry_init.steps={args.steps + 2}", "geometry_init.preview_every=0",
                                    f"geometry_sculpt.steps={args.steps + 2}", "geometry_sculpt.preview_every=0"])
    torch.manual_seed(0)
    stage1 = geometry_init.run(cfg.geometry_init, inputs, None, priors, TimedCheckpoint(tmp / "s1"))
    rows = {}
    stages = (("geometry_init", geometry_init, None), ("geometry_sculpt", geometry_sculpt, stage1))
    for name, module, previous in stages:
        stage_cfg = getattr(cfg, name)
        times, results = {True: [], False: []}, {True: [], False: []}
        for r in range(args.rounds):
            for on in (True, False):
                result, t = run_stage(module, stage_cfg, inputs, previous, priors, tmp / f"{name}{r}{on}", on)
                times[on].append(t)
                results[on].append(result)
        rows[name] = (statistics.median(times[True]), statistics.median(times[False]),
                      all(same(results[True][0], x) for x in results[True][1:]),
                      all(same(results[False][0], x) for x in results[False][1:]))
    print(f"{args.subject}, cpu preset sizes, tiny priors, {args.steps} steps x {args.rounds} rounds, 2 threads\n")
    print("| stage | s/step deterministic | s/step default | ratio | runs equal: deterministic | default |")
    print("|---|---|---|---|---|---|")
    for name, (on, off, eq_on, eq_off) in rows.items():
        print(f"| {name} | {on:.3f} | {off:.3f} | {on / off:.2f} | {eq_on} | {eq_off} |")


if __name__ == "__main__":
    main()
