"""Rendering benchmarks on CPU (2 threads), each beside a peer run in the same process.

Run:  .venv/bin/python benchmarks/bench_render.py [--repeats 5] [--quick] [--only raster]

Prints a Markdown table (best wall time of ``--repeats`` runs after one warm-up: the machines are
shared, and the minimum is the figure least disturbed by other processes; the load average is printed
with it) for:
- rasterising 512x512 views of an 80k- and a 320k-face mesh (peer: trimesh ray casting with embreex,
  first hit per pixel ray; BVH build timed separately);
- hash-grid encoding of 2^18 points, forward and backward (peers: the plain autograd gather, and
  trilinear ``grid_sample`` on a dense 128^3 x 32 grid with the same output width);
- volume rendering a 256x256 image of the stage-1 initial field (peer: the same without the occupancy grid);
- marching tetrahedra at grid 128 (peers: marching tets over all 6 x 128^3 tets, and scikit-image
  marching cubes on the same 129^3 samples).
The ray-casting peer needs ``embreex``, which ``make`` does not install: run
``.venv/bin/pip install -e '.[bench]'`` first. Without it that row says so and names the command.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.render.cameras import reference_camera  # noqa: E402
from stages.render.dmtet import grid_vertices, marching_tets, marching_tets_grid, tet_grid  # noqa: E402
from stages.render.fields import DensityField  # noqa: E402
from stages.render.hashgrid import HashGrid  # noqa: E402
from stages.render.marching_cubes import marching_cubes  # noqa: E402
from stages.render.occupancy import OccupancyGrid  # noqa: E402
from stages.render.rasterize import rasterize, transform_to_clip  # noqa: E402
from stages.render.volume import render_image  # noqa: E402

EMBREEX_MISSING = "embreex not installed: run `.venv/bin/pip install -e '.[bench]'` for this peer"


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best seconds of ``repeats`` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def bench_raster(subdivisions: int, repeats: int) -> list[tuple[str, str, str]]:
    """Our rasteriser vs embree first-hit ray casting on a sphere filling most of a turntable view."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.45)
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.tensor(mesh.faces, dtype=torch.long)
    cam = reference_camera()  # distance 3, fovy 20: the sphere covers most of the frame
    pos = transform_to_clip(verts, cam.mvp())
    ours, rast = timed(lambda: rasterize(pos, faces, (512, 512)), repeats)
    label = f"rasterise 512x512, {len(faces) // 1000}k faces"
    culled, _ = timed(lambda: rasterize(pos, faces, (512, 512), cull_backfaces=True), repeats)
    rows = [(label, "geneman rasterize (ids + barycentrics)", f"{ours:.3f} s"),
            (label, "geneman rasterize, back faces culled (closed mesh)", f"{culled:.3f} s")]
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    except ImportError:
        return rows + [(label, "trimesh + embreex ray casting", EMBREEX_MISSING)]
    o, d = cam.rays(512, 512)
    o, d = o.reshape(-1, 3).double().numpy(), d.reshape(-1, 3).double().numpy()
    t = time.perf_counter()
    caster = RayMeshIntersector(mesh)
    caster.intersects_first(o[:1], d[:1])
    build = time.perf_counter() - t
    peer, ids = timed(lambda: caster.intersects_first(o, d), repeats)
    agree = float((torch.from_numpy(ids).reshape(512, 512) == rast[0, ..., 3].long() - 1).float().mean())
    rows.append((label, "trimesh + embreex ray casting (first hit)",
                 f"{peer:.3f} s (+ {build:.3f} s BVH build); same triangle on {agree:.2%} of pixels"))
    return rows


def bench_hashgrid(repeats: int) -> list[tuple[str, str, str]]:
    """Release hash grid (16 levels, 2^19 entries) on 2^18 points, forward and forward + backward."""
    grid = HashGrid(n_levels=16, log2_hashmap_size=19, per_level_scale=1.447269237440378)
    x = torch.rand(2**18, 3, generator=torch.Generator().manual_seed(0))
    label = "hash-grid encode 2^18 points"

    def fwd_bwd(fn):
        def run():
            grid.zero_grad(set_to_none=True)
            fn(x).square().sum().backward()
        return run

    with torch.no_grad():
        f_ours, _ = timed(lambda: grid(x), repeats)
        f_ref, _ = timed(lambda: grid.forward_reference(x), repeats)
    fb_ours, _ = timed(fwd_bwd(grid), repeats)
    fb_ref, _ = timed(fwd_bwd(grid.forward_reference), repeats)
    dense = torch.nn.Parameter(torch.zeros(1, 32, 128, 128, 128))
    g = (x * 2 - 1).reshape(1, 1, 1, -1, 3)

    def sample():
        return torch.nn.functional.grid_sample(dense, g, align_corners=True).reshape(32, -1).t()

    with torch.no_grad():
        f_dense, _ = timed(sample, repeats)
    fb_dense, _ = timed(lambda: sample().square().sum().backward(), repeats)
    return [(label, "geneman HashGrid (hand-written backward)", f"fwd {f_ours:.3f} s, fwd+bwd {fb_ours:.3f} s"),
            (label, "plain autograd gather (same grid)", f"fwd {f_ref:.3f} s, fwd+bwd {fb_ref:.3f} s"),
            (label, "dense 128^3 x 32 grid_sample", f"fwd {f_dense:.3f} s, fwd+bwd {fb_dense:.3f} s")]


def bench_volume(repeats: int, n_samples: int = 64) -> list[tuple[str, str, str]]:
    """256x256 render of the stage-1 initial field (Magic3D density blob) from the reference camera."""
    torch.manual_seed(0)
    field = DensityField(blob_scale=10.0, blob_std=0.5)
    occ = OccupancyGrid(radius=1.0, resolution=64, step_size=2.0 / n_samples)
    gen = torch.Generator().manual_seed(0)
    update_s = time.perf_counter()
    occ.update(field.density, generator=gen)
    update_s = time.perf_counter() - update_s
    cam = reference_camera()
    label = f"volume render 256x256, {n_samples} samples/ray"
    evaluated = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            evaluated.append(x.shape[0])
            return field(x)

    with torch.no_grad():
        ours, _ = timed(lambda: render_image(Counting(), cam, 256, 256, n_samples=n_samples, occupancy=occ), repeats)
        evaluated.clear()
        render_image(Counting(), cam, 256, 256, n_samples=n_samples, occupancy=occ)
        share = sum(evaluated) / (256 * 256 * n_samples)
        peer, _ = timed(lambda: render_image(field, cam, 256, 256, n_samples=n_samples), repeats)
    return [(label, "with occupancy grid (64^3)",
             f"{ours:.3f} s ({occ.occupied_fraction():.1%} cells occupied, {share:.0%} of samples evaluated; "
             f"grid update {update_s:.3f} s)"),
            (label, "every sample evaluated", f"{peer:.3f} s")]


def bench_marching(repeats: int, res: int = 128) -> list[tuple[str, str, str]]:
    """Marching tets at grid ``res`` on an analytic SDF (an ellipsoid with a bump)."""
    v = grid_vertices(res)
    sdf = (v * torch.tensor([1.6, 2.2, 1.0])).norm(dim=-1) - 0.8 + 0.05 * torch.sin(8 * v[:, 2])
    label = f"marching tets, grid {res}"
    ours, (mv, mf) = timed(lambda: marching_tets_grid(v, sdf, res), repeats)
    t = time.perf_counter()
    _, tets = tet_grid(res)
    build = time.perf_counter() - t
    full, _ = timed(lambda: marching_tets(v, tets, sdf), max(1, repeats // 2))
    tets = None  # free the full grid before marching cubes
    vol = sdf.reshape(res + 1, res + 1, res + 1)
    mc, _ = timed(lambda: marching_cubes(vol, 0.0, inside="below"), repeats)
    return [(label, "geneman marching_tets_grid (sign-change cubes only)", f"{ours:.3f} s ({len(mf)} faces)"),
            (label, "marching_tets over all 6 x 128^3 tets", f"{full:.3f} s (+ {build:.3f} s tet grid)"),
            (label, "scikit-image marching cubes, same samples", f"{mc:.3f} s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one repeat, skip the 320k mesh")
    parser.add_argument("--only", choices=["raster", "hashgrid", "volume", "marching"],
                        help="run only this section")
    args = parser.parse_args()
    torch.set_num_threads(2)
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    if importlib.util.find_spec("embreex") is None:
        print(f"warning: {EMBREEX_MISSING}", file=sys.stderr, flush=True)
    print("| benchmark | implementation | best time |")
    print("|---|---|---|", flush=True)
    raster = [lambda: bench_raster(6, repeats)] + ([] if args.quick else [lambda: bench_raster(7, repeats)])
    sections = {"raster": raster,
                "hashgrid": [lambda: bench_hashgrid(repeats)],
                "volume": [lambda: bench_volume(max(1, repeats // 2))],
                "marching": [lambda: bench_marching(repeats)]}
    sections = [s for name, group in sections.items() if args.only in (None, name) for s in group]
    for section in sections:
        for row in section():
            print("| " + " | ".join(row) + " |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
