"""UV unwrapping at the sizes stage 2 hands to the texture stages: xatlas (in its child process, with
a timeout) against the fallback atlas.

Run:  nice -n 19 .venv/bin/python benchmarks/bench_xatlas.py [--subject front_back] [--grids 96 320 512]
                                                           [--timeout 600] [--json OUT.json]
      nice -n 19 .venv/bin/python benchmarks/bench_xatlas.py --count-only [--grids 512]   (faces of every subject)

The meshes are stage 2's own surface extraction of a code-made person with a perfect fit: the
subject (:mod:`evaluation.subjects`) framed in the scene as preprocess frames a photo
(:func:`evaluation.framing.frame_subject`), the band of the tet grid around it as stage 2 builds it
(``geometry_sculpt.Grid.around`` with the release's band of 4 cells), the subject's signed distance
at the band vertices (:class:`stages.render.mesh_sdf.MeshSDF`) and marching tets over the band
(:func:`stages.render.dmtet.marching_tets_cubes`). Grid 512 is ``geometry_sculpt.tet_grid`` of the
paper and release presets, so its face count is what stage 2 gives the texture stages for this
subject (before any simplification); smaller grids give the smaller meshes.

For each mesh: seconds of :func:`stages.render.uv.unwrap_uv` (child process start, xatlas, the
result read back), the method it ended with, and why it fell back (``timed out`` when it took the
whole timeout, else ``crashed / failed``); then seconds of :func:`stages.render.uv.fallback_uv` on the
same mesh. One run each (xatlas at these sizes takes minutes; the load average is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.framing import frame_subject  # noqa: E402
from evaluation.subjects import SUBJECTS, make_subject  # noqa: E402
from stages import geometry_sculpt  # noqa: E402
from stages.render.dmtet import marching_tets_cubes  # noqa: E402
from stages.render.mesh_sdf import MeshSDF  # noqa: E402
from stages.render.uv import fallback_uv, unwrap_uv  # noqa: E402


def stage2_mesh(subject: str, grid: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Marching tets of ``subject``'s signed distance on stage 2's band at tet grid ``grid``.

    Returns:
        verts [V, 3], faces [F, 3] (scene frame) and the seconds the extraction took.
    """
    t = time.perf_counter()
    mesh = make_subject(subject)
    framing = frame_subject(mesh)
    verts = torch.tensor(framing.to_scene(mesh.vertices), dtype=torch.float32)
    target = MeshSDF(verts, torch.tensor(mesh.faces, dtype=torch.long))
    band = geometry_sculpt.Grid.around(target, geometry_sculpt.Config(tet_grid=grid), torch.device("cpu"))
    out_verts, out_faces = marching_tets_cubes(band.verts, band.cubes, target(band.verts))
    return out_verts.detach(), out_faces, time.perf_counter() - t


def bench_one(verts: torch.Tensor, faces: torch.Tensor, timeout: float) -> dict:
    """xatlas (through ``unwrap_uv``) and the fallback on one mesh."""
    t = time.perf_counter()
    m = unwrap_uv(verts, faces, timeout=timeout)
    xatlas_s = time.perf_counter() - t
    why = ""
    if m.method == "fallback":
        why = getattr(m, "note", "") or ("timed out" if xatlas_s >= timeout else "crashed / failed")
    t = time.perf_counter()
    fb = fallback_uv(verts, faces)
    fallback_s = time.perf_counter() - t
    return {"faces": int(faces.shape[0]), "verts": int(verts.shape[0]), "unwrap_s": round(xatlas_s, 2),
            "method": m.method, "why": why, "uv_verts": int(m.uvs.shape[0]),
            "fallback_s": round(fallback_s, 3), "fallback_uv_verts": int(fb.uvs.shape[0])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", default="front_back", choices=SUBJECTS)
    ap.add_argument("--grids", type=int, nargs="+", default=[96, 320, 512], help="tet-grid resolutions")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds xatlas may take per mesh")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--count-only", action="store_true", help="only the face counts, of every subject")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.count_only:
        for subject in SUBJECTS:
            for grid in args.grids:
                _, faces, extract_s = stage2_mesh(subject, grid)
                print(f"| {subject} | {grid} | {faces.shape[0]} | {extract_s:.1f} |", flush=True)
        return 0
    rows = []
    for grid in args.grids:
        verts, faces, extract_s = stage2_mesh(args.subject, grid)
        print(f"grid {grid}: {faces.shape[0]} faces, {verts.shape[0]} verts ({extract_s:.1f} s to extract)",
              flush=True)
        row = {"subject": args.subject, "grid": grid, "extract_s": round(extract_s, 1),
               **bench_one(verts, faces, args.timeout), "load": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| tet grid | faces | unwrap_uv s | method | why | fallback_uv s | load (1 min) after |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['grid']} | {r['faces']} | {r['unwrap_s']} | {r['method']} | {r['why'] or '-'} | "
              f"{r['fallback_s']} | {r['load'][0]} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
