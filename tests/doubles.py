"""Test doubles of the four stages, for runner, resume and batch tests (never used by the product).

Each double fits a small parameter tensor to random pixels of the reference image, drawing from
the python, numpy and torch RNGs on every step, so that a resume that forgot any RNG state or
optimiser state gives different numbers than an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.run.runner import StageSpec
from stages import previews


@dataclass
class DoubleResult:
    """A stage result: the fitted tensor."""

    weights: torch.Tensor

    def save(self, folder: Path) -> None:
        save_file({"weights": self.weights.contiguous()}, str(folder / "weights.safetensors"))

    @classmethod
    def load(cls, folder: Path) -> "DoubleResult":
        return cls(load_file(str(folder / "weights.safetensors"))["weights"])

    def export(self, folder: Path, formats: list[str], cfg=None) -> list[Path]:
        """``weights.txt``, and ``export.json``: the formats and export config it was called with."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "weights.txt"
        path.write_text(" ".join(f"{v:.6f}" for v in self.weights.flatten().tolist()))
        call = folder / "export.json"
        call.write_text(json.dumps({"formats": list(formats), "cfg": None if cfg is None else asdict(cfg)}))
        return [path, call]


class _Holder(torch.nn.Module):
    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(init.clone())


class DoubleStage:
    """Stands in for a stage module: ``run`` and ``Result``.

    Env knobs for subprocess tests: GENEMAN_TEST_STEP_SLEEP (seconds per step),
    GENEMAN_TEST_FAIL (``stage:step`` raises there), GENEMAN_TEST_PREVIEWS (a preview strip every step,
    as ``stages.previews`` writes them).
    """

    Result = DoubleResult

    def __init__(self, name: str):
        self.name = name

    def run(self, cfg, inputs, previous, priors, ckpt):
        init = previous.weights if previous is not None else torch.zeros(8, 3)
        holder = _Holder(init)
        opt = torch.optim.Adam(holder.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(1234)
        objects = {"model": holder, "optim": opt, "gen": gen}
        start = ckpt.resume(objects)
        ckpt.folder.parent.mkdir(parents=True, exist_ok=True)
        with open(ckpt.folder.parent / "starts.txt", "a") as f:  # lets tests see that a resume really resumed
            f.write(f"{start}\n")
        sleep = float(os.environ.get("GENEMAN_TEST_STEP_SLEEP", "0"))
        fail = os.environ.get("GENEMAN_TEST_FAIL", "")
        pixels = inputs.rgb.reshape(-1, 3)
        for step in range(start, cfg.steps):
            if fail == f"{self.name}:{step}":
                raise RuntimeError(f"injected failure at {self.name}:{step}")
            idx = torch.randint(0, pixels.shape[0], (64,))
            noise = torch.randn(8, 3, generator=gen) * 0.01
            scale = float(np.random.uniform(0.5, 1.5)) * random.uniform(0.9, 1.1)
            target = pixels[idx].mean(0) * scale
            loss = ((holder.w + noise - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sleep:
                time.sleep(sleep)
            if os.environ.get("GENEMAN_TEST_PREVIEWS"):
                previews.write(ckpt, step + 1, holder.w.detach().clamp(0, 1).reshape(2, 2, 2, 3).repeat(1, 4, 4, 1))
            ckpt.step_done(step + 1, {"fit": loss}, objects)
        return DoubleResult(holder.w.detach().clone())


def double_stages() -> tuple[StageSpec, ...]:
    """Doubles under the real stage names and folders."""
    names = [("geometry_init", "01_geometry_init"), ("geometry_sculpt", "02_geometry_sculpt"),
             ("texture_coarse", "03_texture_coarse"), ("texture_refine", "04_texture_refine")]
    return tuple(StageSpec(n, f, DoubleStage(n)) for n, f in names)


def small_config(sets: list[str] = ()):
    """The cpu preset with few steps, checkpoints every step, and no depth/normal or landmark warning."""
    from pipeline.config import load_config

    base = ["geometry_init.steps=12", "geometry_sculpt.steps=6", "texture_coarse.steps=6", "texture_refine.steps=6",
            "checkpoint.every_n_steps=1", "checkpoint.keep_last=2", "preprocess.depth_normal=false",
            "preprocess.landmarks=false"]
    return load_config("cpu", None, base + list(sets))
