"""A picture of a bench result: the subject (top row) beside its reconstruction (bottom row), shaded
normals from the front, the side, the back and the other side; with ``--albedo``, a turntable strip of
the unlit albedo instead (``--views`` azimuths from 0, the renders the bench's PSNR compares: the truth
by :class:`evaluation.truth.SubjectRenderer`, the avatar by the last stage's ``TexturedMesh.render``).

Run:  .venv/bin/python benchmarks/bench_picture.py OUT [OUT ...] -o docs/images/bench.png
      .venv/bin/python benchmarks/bench_picture.py OUT --albedo --views 8 -o docs/images/strip.png
(each OUT a `geneman bench` folder: its subject.glb or the subject named in bench.json, and recon.glb;
``--albedo`` reads the stage-4 result in OUT/run)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.framing import Framing  # noqa: E402
from evaluation.meshes import load_mesh  # noqa: E402
from evaluation.truth import SubjectRenderer  # noqa: E402
from stages.render.cameras import orbit_cameras, turntable  # noqa: E402
from stages.render.mesh_render import render_mesh  # noqa: E402
from stages.textured_mesh import TexturedMesh  # noqa: E402


def albedo_rows(out: Path, framing: Framing, subject: Path, size: int, views: int) -> list[np.ndarray]:
    """Two ``[H, views W, 3]`` uint8 rows: the truth's albedo, then the avatar's, at elevation 0, distance 3,
    fovy 20, azimuths ``360 k / views``."""
    cams = turntable(views)
    avatar = TexturedMesh.load(out / "run" / "04_texture_refine" / "result")
    truth = SubjectRenderer(load_mesh(subject), framing)
    with torch.no_grad():
        return [row(truth(cams, size, size)["rgb"]), row(avatar.render(cams, size, size)["rgb"])]


def row(images: torch.Tensor) -> np.ndarray:
    """``[B, H, W, 3]`` in [0, 1] -> ``[H, B W, 3]`` uint8, the views side by side."""
    b, h, w, c = images.shape
    return (images.permute(1, 0, 2, 3).reshape(h, b * w, c).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def shaded(verts: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """``[H, 4 W, 3]`` uint8: camera-space normals as colours over white from four azimuths."""
    cams = orbit_cameras(torch.zeros(4), torch.tensor([0.0, 90.0, 180.0, 270.0]), torch.full((4,), 3.0),
                         torch.full((4,), 20.0))
    out = render_mesh(torch.as_tensor(verts, dtype=torch.float32), torch.as_tensor(faces), cams, size, size)
    n = torch.einsum("bhwj,bjk->bhwk", out["normal"], cams.c2w[:, :3, :3])
    return row(out["mask"] * (n * 0.5 + 0.5) + (1 - out["mask"]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("outs", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--albedo", action="store_true", help="turntable strip of the unlit albedo (needs stage 4)")
    p.add_argument("--views", type=int, default=8, help="views of the --albedo strip")
    args = p.parse_args()
    rows = []
    for out in args.outs:
        report = json.loads((out / "bench.json").read_text())
        f = report["framing"]
        framing = Framing(f["scale"], np.array(f["translation"]), np.array(f["rotation"]))
        if args.albedo:
            rows += albedo_rows(out, framing, Path(report["subject"]), args.size, args.views)
            continue
        subject = trimesh.load(report["subject"], force="mesh", process=False)
        recon = trimesh.load(out / "recon.glb", force="mesh", process=False)
        for mesh in (subject, recon):
            rows.append(shaded(framing.to_scene(np.asarray(mesh.vertices)), np.asarray(mesh.faces), args.size))
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
