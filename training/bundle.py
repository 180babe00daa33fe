"""The bundled tiny priors: made from a seed by the project's own commands, then stored in half precision.

``make priors`` (``python -m training.bundle``) runs, as subprocesses, the commands a user would:

1. ``geneman data synth`` of :data:`TRAIN_PEOPLE` people from :data:`TRAIN_SEED` (the demo's photo and
   the benchmark's held-out people come from other seeds, so none of them is in the training set);
2. ``geneman data render`` of them at :data:`SIZE` pixels (captioned crops, normal and depth images,
   view pairs), and again at :data:`MAPS_SIZE` for the estimators;
3. ``geneman prior train-vae`` on the RGB, normal and depth images together (one SD base: VAE, text
   encoder, tokenizer, scheduler; the text encoder is the tiny one at its seeded initialisation, frozen,
   as every trainer keeps it), then ``train-2d`` (the 2D prior), ``train-3d`` (the 3D prior),
   ``train-2d`` on the normal and on the depth images (the normal- and depth-adapted models) with that
   base, ``train-controlnet`` (normal images -> the 2D prior's images), ``train-vae --decoder-only`` on
   the RGB images (the decoder stage 4's SDEdit decodes with), and last ``train-depth`` and
   ``train-normal`` on a second render of the same people at :data:`MAPS_SIZE` pixels (the estimators
   preprocess runs in place of Sapiens);
4. copies every output into :data:`BUNDLED` in the layout :mod:`priors.weights` reads under a weights
   folder (the hub ids of :data:`REPOS`, which the ``demo`` preset names), each safetensors file cast to
   float16 (the stages cast weights to their own dtype on load), each output's ``train.json`` beside it,
   and ``BUNDLE.json``: the commands, the seeds, each model's first and last losses and every file's
   sha256.

Nothing in the repository is read but the code: the weights come from the seed alone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

BUNDLED = Path(__file__).resolve().parents[1] / "priors" / "bundled"
"""Where the bundled priors live (package data of :mod:`priors`; ``priors.weights_dir: "@bundled"``)."""
TRAIN_SEED, TRAIN_PEOPLE = 100, 80
"""The training people: ``geneman data synth -n 80 --seed 100``."""
RENDER_SEED, SIZE, VIEWS_2D, VIEWS_3D = 1, 64, 16, 8
"""``geneman data render --seed 1 --size 64 --views-2d 16 --views-3d 8``."""
MAPS_SEED, MAPS_SIZE, MAPS_VIEWS, MAPS_CROPS = 2, 128, 24, (0.8, 0.15, 0.05)
"""The estimators' data: ``geneman data render --seed 2 --size 128 --views-2d 24 --views-3d 0 --crop-ratios
0.8 0.15 0.05`` of the same people (the demo photo is a whole person; the stages use the maps at up to 128)."""
REPOS = {"sd_decoder": "tiny/sd", "prior_2d": "tiny/geneman/prior2d", "prior_3d": "tiny/geneman/prior3d",
         "normal_adapted": "tiny/normal-adapted", "depth_adapted": "tiny/depth-adapted",
         "controlnet": "tiny/controlnet-normal", "depth_estimator": "tiny/depth-estimator",
         "normal_estimator": "tiny/normal-estimator"}
"""Folder of each output under :data:`BUNDLED` (the ``demo`` preset's ``priors.*`` locations); the SD base
is ``sd_decoder``: ``sd`` with its decoder trained on further on the RGB images alone (the encoder, and so
every latent the priors were trained on, unchanged)."""
TRAIN = (  # (name, kind, data folder under the work folder, steps, learning rate, extra options)
    ("sd", "vae", "data/all", 1500, 1e-3, ()),
    ("prior_2d", "2d", "data", 1000, 5e-4, ("--base", "{sd}")),
    ("prior_3d", "3d", "data", 1600, 5e-4, ("--base", "{sd}")),
    ("normal_adapted", "2d", "data/normal", 300, 5e-4, ("--base", "{sd}")),
    ("depth_adapted", "2d", "data/depth", 300, 5e-4, ("--base", "{sd}")),
    ("controlnet", "controlnet", "data", 300, 2e-4, ("--init", "{prior_2d}")),
    ("sd_decoder", "vae", "data", 600, 5e-4, ("--init", "{sd}", "--decoder-only")),
    ("depth_estimator", "depth", "maps", 3000, 1e-3, ()),
    ("normal_estimator", "normal", "maps", 3000, 1e-3, ()),
)
"""The trainings, in order (later ones use earlier outputs); batch 8, checkpoints every 100 steps, the
trainers' default warm-up, cosine decay and weight average; at :data:`SIZE` pixels, the estimators at
:data:`MAPS_SIZE`."""
BATCH = 8
DATA_STEPS = ("people", "data", "maps")
"""The steps that make data (the others train)."""


def mixed_metadata(data: Path) -> Path:
    """``DATA/all/metadata.jsonl``: the RGB, normal and depth images together (the VAE encodes all three)."""
    rows = []
    for folder in ("2d", "normal", "depth"):
        for line in (data / folder / "metadata.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows.append({"file_name": f"../{folder}/{row['file_name']}", "text": row["text"]})
    out = data / "all" / "metadata.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out.parent


def commands(work: Path) -> list[tuple[str, list[str]]]:
    """``(name, geneman arguments)`` of every step, in order."""
    people, data, maps = work / "people", work / "data", work / "maps"
    steps = [("people", ["data", "synth", "-n", str(TRAIN_PEOPLE), "-o", str(people), "--seed", str(TRAIN_SEED)]),
             ("data", ["data", "render", str(people), "-o", str(data), "--size", str(SIZE), "--views-2d",
                       str(VIEWS_2D), "--views-3d", str(VIEWS_3D), "--seed", str(RENDER_SEED)]),
             ("maps", ["data", "render", str(people), "-o", str(maps), "--size", str(MAPS_SIZE), "--views-2d",
                       str(MAPS_VIEWS), "--views-3d", "0", "--crop-ratios", *map(str, MAPS_CROPS),
                       "--seed", str(MAPS_SEED)])]
    outs = {name: work / name for name, *_ in TRAIN}
    for name, kind, folder, n, lr, extra in TRAIN:
        size = MAPS_SIZE if folder == "maps" else SIZE
        steps.append((name, ["prior", f"train-{kind}", str(work / folder), "-o", str(outs[name]),
                             "--steps", str(n), "--batch-size", str(BATCH), "--lr", str(lr), "--save-every", "100",
                             "--size", str(size), *[e.format(**{k: str(v) for k, v in outs.items()}) for e in extra]]))
    return steps


def half_copy(src: Path, dst: Path) -> None:
    """Copy a trained output folder, safetensors cast to float16 (metadata kept), checkpoints and
    samples left out."""
    from safetensors.torch import load_file, safe_open, save_file

    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or rel.parts[0] in ("ckpt", "samples") or path.name == "train_config.json":
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(target), metadata=meta)
        else:
            shutil.copyfile(path, target)


def assemble(work: Path, out: Path, log: list[dict]) -> None:
    """Write the bundle into ``out`` (replacing it whole at the end)."""
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    kinds = {name: kind for name, kind, *_ in TRAIN}
    for name in REPOS:
        kind, src = kinds[name], work / name
        if kind == "controlnet":
            src = src / "controlnet"
            shutil.copyfile(work / name / "train.json", src / "train.json")
        elif kind == "2d" and name == "prior_2d":
            half_copy(src / "unet", tmp / REPOS[name])
            shutil.copyfile(src / "train.json", tmp / REPOS[name] / "train.json")
            continue
        half_copy(src, tmp / REPOS[name])
    files = {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    summary = {"made_by": "python -m training.bundle (make priors)", "train_seed": TRAIN_SEED,
               "train_people": TRAIN_PEOPLE, "render_seed": RENDER_SEED, "size": SIZE, "maps_seed": MAPS_SEED,
               "maps_size": MAPS_SIZE, "steps": log,
               "repos": REPOS, "dtype": "float16", "files": files}
    (tmp / "BUNDLE.json").write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bundle", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/priors-work"),
                        help="folder for the data and the full-precision outputs (rerun: each step resumes)")
    parser.add_argument("--out", type=Path, default=BUNDLED, help="bundle folder (default: priors/bundled)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    steps = commands(args.work)
    log = []
    for name, argv_ in steps:
        t0 = time.monotonic()
        done = (args.work / name / ("manifest.json" if name in DATA_STEPS else "train.json")).is_file()
        if not done:
            if name == "sd":
                mixed_metadata(args.work / "data")
            print(f"bundle: geneman {' '.join(argv_)}", flush=True)
            subprocess.run([sys.executable, "-m", "pipeline.cli.main", *argv_], check=True)
        entry = {"name": name, "command": ["geneman", *argv_],
                 "seconds": None if done else round(time.monotonic() - t0, 1)}  # None: made by an earlier call
        if name not in DATA_STEPS:
            train = json.loads((args.work / name / "train.json").read_text())
            entry |= {"loss_first_20": train["loss_first_20"], "loss_last_20": train["loss_last_20"],
                      "seconds": train["seconds_this_call"]}  # the training loop's own time
        log.append(entry)
    assemble(args.work, args.out, log)
    print(f"bundle: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
