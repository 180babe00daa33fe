"""How the stage-1 mesh's density level shapes its silhouette, per bench folder: for each candidate level,
the marching-cubes mesh of the fitted field is rendered from a turntable and from the reference camera,
and its mask is compared with three references:

- ``truth``: the subject's own mask on the turntable (what the bench scores; pixels over / under, IoU);
- ``photo``: the photo's mask on the reference view (what a real run has: the IoU the stage's
  ``mesh_level_search`` ranks by, :func:`stages.geometry_init.silhouette_iou`);
- ``field``: the field's own volume-rendered opacity (> 0.5) on the turntable (also there in a real run).

Which of the last two tracks the first is what a per-run level choice can rely on.

Run:  .venv/bin/python benchmarks/bench_levels.py outputs/bench/front_back outputs/bench/half_body \
          [--levels 2 5 10 20 40] [--views 12] [--size 256]
(each OUT a `geneman bench` folder whose run has a stage-1 result)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.framing import Framing  # noqa: E402
from evaluation.meshes import load_mesh  # noqa: E402
from evaluation.truth import SubjectRenderer  # noqa: E402
from pipeline.config import from_yaml_file  # noqa: E402
from stages import geometry_init as gi  # noqa: E402
from stages.inputs import Inputs  # noqa: E402
from stages.render.cameras import reference_camera, turntable  # noqa: E402
from stages.render.marching_cubes import evaluate_grid, marching_cubes  # noqa: E402
from stages.render.mesh_render import render_mesh  # noqa: E402


def compare(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Pixels over (mesh, not reference) and under (reference, not mesh) and the IoU of two boolean masks."""
    over, under = int((pred & ~ref).sum()), int((~pred & ref).sum())
    union = int((pred | ref).sum())
    return {"over": over, "under": under, "iou": round(int((pred & ref).sum()) / max(union, 1), 4)}


def bench_folder(out: Path, levels: list[float], views: int, size: int) -> list[dict]:
    report = json.loads((out / "bench.json").read_text())
    f = report["framing"]
    framing = Framing(f["scale"], np.array(f["translation"]), np.array(f["rotation"]))
    cfg = from_yaml_file(out / "run" / "config.yaml").geometry_init
    result = gi.Result.load(out / "run" / "01_geometry_init" / "result")
    field_ = gi.build_field(cfg)
    field_.load_state_dict(result.state)
    field_.set_step(cfg.steps)
    inputs = Inputs.load(out / "run" / "00_preprocess" / "result")
    c = cfg.camera
    ref_cam = reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy)
    cams = turntable(views)
    truth = SubjectRenderer(load_mesh(Path(report["subject"])), framing)(cams, size, size)["mask"][..., 0] > 0.5
    occ = gi.build_occupancy(cfg)
    rows = []
    with torch.no_grad():
        for _ in range(4):  # one jittered point per cell each
            occ.update(field_.density, dilation=1)
        opacity = gi.render(field_, occ, cams, size, cfg, False, None, perturb=False)["opacity"][..., 0] > 0.5
        values = evaluate_grid(field_.density, cfg.mesh_resolution, cfg.radius)
        for level in levels:
            verts, faces = marching_cubes(values, level, cfg.radius)
            if faces.shape[0] == 0:
                rows.append({"subject": out.name, "level": level, "faces": 0})
                continue
            mesh = render_mesh(verts, faces, cams, size, size)["mask"][..., 0] > 0.5
            rows.append({"subject": out.name, "level": level, "faces": int(faces.shape[0]),
                         "truth": compare(mesh, truth), "photo": gi.silhouette_iou(verts, faces, inputs.mask, ref_cam),
                         "field": compare(mesh, opacity)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("outs", nargs="+", type=Path)
    p.add_argument("--levels", nargs="+", type=float, default=[2.0, 5.0, 10.0, 20.0, 40.0])
    p.add_argument("--views", type=int, default=12)
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    print("| subject | level | faces | truth over/under/IoU | photo (ref view) IoU | field opacity IoU |")
    print("|---|---|---|---|---|---|")
    for out in args.outs:
        for r in bench_folder(out, args.levels, args.views, args.size):
            if not r["faces"]:
                print(f"| {r['subject']} | {r['level']:g} | 0 | - | - | - |")
                continue
            t = r["truth"]
            print(f"| {r['subject']} | {r['level']:g} | {r['faces']} | {t['over']}/{t['under']}/{t['iou']:.3f} "
                  f"| {r['photo']:.3f} | {r['field']['iou']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
