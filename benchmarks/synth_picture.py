"""A picture of generated people (:mod:`training.synth`), one column each: the unlit albedo from the front,
the side (azimuth 90) and the back, then shaded normals from the front, each person framed as preprocess
frames a photo.

Run:  .venv/bin/python benchmarks/synth_picture.py [--seed S] [--first I] [-n 8] [--voxel V] -o /tmp/synth.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_picture import shaded  # noqa: E402
from evaluation.framing import frame_subject  # noqa: E402
from evaluation.truth import SubjectRenderer  # noqa: E402
from stages.render.cameras import orbit_cameras  # noqa: E402
from stages.render.export import to_uint8  # noqa: E402
from training.synth import build_person, person  # noqa: E402


def column(seed: int, index: int, voxel: float, size: int) -> np.ndarray:
    """``[4 H, W, 3]`` uint8: person ``index`` of ``seed``, albedo at azimuths 0 / 90 / 180, shaded normals."""
    mesh = build_person(person(seed, index), voxel)
    framing = frame_subject(mesh, size)
    cams = orbit_cameras(torch.zeros(3), torch.tensor([0.0, 90.0, 180.0]), torch.full((3,), 3.0),
                         torch.full((3,), 20.0))
    with torch.no_grad():
        albedo = to_uint8(SubjectRenderer(mesh, framing)(cams, size, size)["rgb"].reshape(3 * size, size, 3))
    front = shaded(framing.to_scene(np.asarray(mesh.vertices)), np.asarray(mesh.faces), size)[:, :size]
    return np.concatenate([albedo, front], axis=0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first", type=int, default=0, help="index of the first person")
    p.add_argument("-n", type=int, default=8, help="number of people")
    p.add_argument("--voxel", type=float, default=0.01, help="marching-cubes grid spacing, metres")
    p.add_argument("--size", type=int, default=160, help="view side, pixels")
    args = p.parse_args()
    columns = [column(args.seed, i, args.voxel, args.size) for i in range(args.first, args.first + args.n)]
    Image.fromarray(np.concatenate(columns, axis=1)).save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
