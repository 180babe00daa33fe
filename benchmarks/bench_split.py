"""`geneman bench` over a split of subjects, one table: tune on one split, report the held-out one.

    .venv/bin/python benchmarks/bench_split.py tune    --preset demo --guidance priors -o outputs/split/demo
    .venv/bin/python benchmarks/bench_split.py heldout --preset demo --guidance priors -o outputs/split/demo
    .venv/bin/python benchmarks/bench_split.py table   -o outputs/split/demo       # the table again

Splits (never tune on the held-out figures):
- ``tune``: the five built-in subjects and persons 0-4 of ``geneman data synth --seed 500``
  (:data:`TUNE_SEED`);
- ``heldout``: persons 0-9 of seed 300 (:data:`HELDOUT_SEED`, the seed ``bench_demo.py`` holds out too).

The bundled priors were trained on seed 100 and the demo photo is from seed 200, so neither split was
seen in training. Each subject's bench goes to ``OUT/<subject>/`` (a subject with a ``bench.json`` there is
kept, unless ``--redo``); ``--jobs N`` runs N benches at once, each on its share of the cores. The table
(``OUT/table.md``, ``OUT/table.json``) has each subject's silhouette IoUs after the two geometry stages, the
F-scores, the unlit PSNR and the bench's seconds, the mean of each split, and the learned-path goal lines
(issue 21) each subject meets.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TUNE_SEED, TUNE_PEOPLE = 500, 5
HELDOUT_SEED, HELDOUT_PEOPLE = 300, 10
GOALS = {"iou": 0.85, "iou_back": 0.80, "iou_ref": 0.95, "fscore_5": 0.8, "psnr_back": 20.0}
"""The learned path's goal lines: turntable IoU, its back half, reference IoU (each geometry stage), F@5%,
unlit PSNR over the back half."""


def split_subjects(split: str) -> list[str]:
    """The ``--subject`` values of a split."""
    from evaluation.subjects import SUBJECTS

    if split == "tune":
        return list(SUBJECTS) + [f"synth:{TUNE_SEED}:{i}" for i in range(TUNE_PEOPLE)]
    if split == "heldout":
        return [f"synth:{HELDOUT_SEED}:{i}" for i in range(HELDOUT_PEOPLE)]
    raise ValueError(f"unknown split {split!r}: tune or heldout")


def folder_name(subject: str) -> str:
    return subject.replace(":", "_")


def run_one(subject: str, out: Path, args, threads: int) -> tuple[str, int, float]:
    """One ``geneman bench`` in a subprocess; its output in ``OUT/<subject>.log``."""
    folder = out / folder_name(subject)
    if (folder / "bench.json").is_file() and not args.redo:
        return subject, 0, 0.0
    cmd = [sys.executable, "-m", "pipeline.cli.main", "bench", "--subject", subject, "-o", str(folder),
           "--preset", args.preset, "--guidance", args.guidance, "--quiet"]
    for item in args.set or []:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    with open(out / f"{folder_name(subject)}.log", "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    seconds = time.monotonic() - t0
    print(f"{subject}: exit {rc} after {seconds:.0f} s", flush=True)
    return subject, rc, seconds


def row(subject: str, report: dict) -> dict:
    """One subject's figures from its bench.json."""
    stages = report["stages"]
    out = {"subject": subject, "guidance": report.get("guidance"), "wall_s": report.get("wall_s")}
    for stage, tag in (("geometry_init", "s1"), ("geometry_sculpt", "s2")):
        for key in ("iou", "iou_back", "iou_min", "iou_ref", "fscore", "fscore_5"):
            if key in stages.get(stage, {}):
                out[f"{tag}_{key}"] = stages[stage][key]
    for key in ("psnr", "psnr_back", "final_iou", "final_iou_back", "final_iou_ref"):
        if key in report:
            out[key] = report[key]
    s2 = lambda k: out.get(f"s2_{k}", float("nan"))  # noqa: E731
    out["goals_met"] = sorted(
        [k for k in ("iou", "iou_back", "fscore_5") if s2(k) >= GOALS[k]]
        + (["iou_ref"] if min(out.get("s1_iou_ref", 0), out.get("s2_iou_ref", 0)) >= GOALS["iou_ref"] else [])
        + (["psnr_back"] if out.get("psnr_back", 0) >= GOALS["psnr_back"] else []))
    return out


COLUMNS = [("s1_iou_ref", "s1 iou_ref"), ("s1_iou", "s1 iou"), ("s1_fscore_5", "s1 F@5%"), ("s2_iou_ref", "s2 iou_ref"),
           ("s2_iou", "iou"), ("s2_iou_back", "iou back"), ("s2_iou_min", "iou min"), ("s2_fscore", "F@1%"),
           ("s2_fscore_5", "F@5%"), ("psnr", "PSNR"), ("psnr_back", "PSNR back"), ("wall_s", "s")]


def table(out: Path) -> str:
    """``OUT/table.md`` and ``OUT/table.json`` from every bench folder under ``OUT``, by split."""
    import math

    rows = {}
    for split in ("tune", "heldout"):
        found = [(s, out / folder_name(s) / "bench.json") for s in split_subjects(split)]
        rows[split] = [row(s, json.loads(p.read_text())) for s, p in found if p.is_file()]
    lines = ["| split | subject | " + " | ".join(c for _, c in COLUMNS) + " | goals met |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (  # noqa: E731
        f"{v:.0f}" if isinstance(v, float) and v > 100 else f"{v:.3f}" if isinstance(v, float) and v <= 1 else
        f"{v:.2f}" if isinstance(v, float) else str(v))
    means = {}
    for split, rs in rows.items():
        for r in rs:
            lines.append(f"| {split} | {r['subject']} | " + " | ".join(fmt(r.get(k)) for k, _ in COLUMNS)
                         + f" | {len(r['goals_met'])}/5 |")
        if rs:
            means[split] = {k: sum(r[k] for r in rs if k in r) / max(1, sum(k in r for r in rs)) for k, _ in COLUMNS}
            lines.append(f"| {split} | **mean of {len(rs)}** | " + " | ".join(fmt(means[split][k]) for k, _ in COLUMNS)
                         + " | |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps({"rows": rows, "means": means, "goals": GOALS}, indent=2) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("split", choices=["tune", "heldout", "table"])
    p.add_argument("-o", "--out", type=Path, required=True, help="folder of the benches and the table")
    p.add_argument("--preset", default="demo")
    p.add_argument("--guidance", default="priors", choices=["oracle", "priors"])
    p.add_argument("--set", action="append", help="KEY=VALUE passed to every bench (repeatable)")
    p.add_argument("--jobs", type=int, default=2, help="benches at once, each on its share of the cores")
    p.add_argument("--subjects", nargs="*", help="only these subjects of the split")
    p.add_argument("--redo", action="store_true", help="run again where a bench.json is there")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.split != "table":
        subjects = [s for s in split_subjects(args.split) if not args.subjects or s in args.subjects]
        threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda s: run_one(s, args.out, args, threads), subjects))
        failed = [s for s, rc, _ in results if rc != 0]
        if failed:
            print(f"failed: {', '.join(failed)} (see OUT/<subject>.log)", file=sys.stderr)
    print(table(args.out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
