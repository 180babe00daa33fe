"""The training sub-commands: ``geneman data synth|render`` and ``geneman prior train-2d|train-3d|train-vae|
train-controlnet|train-depth|train-normal``.

Logic lives in :mod:`training` (synth, render, train); this module parses, wires the run store's
checkpoints, stop signals and progress into the trainer, and turns the packages' ``ValueError`` into
one-line input errors. Imports of torch and the packages wait inside the commands.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.cli.args import common
from pipeline.errors import InputError

log = logging.getLogger("geneman")

TRAIN_CONFIG = "train_config.json"
"""In a trainer's output folder from its start: the options a resume must match."""


def add_parsers(sub) -> None:
    """Add ``data`` and ``prior`` to the ``geneman`` parser."""
    _data_parsers(sub)
    prior = sub.add_parser("prior", help="train the 2D or 3D prior, a VAE, a ControlNet or a depth / normal "
                                         "estimator on rendered data")
    kinds = prior.add_subparsers(dest="prior_command", required=True)
    for kind, arch, lr in TRAINERS:
        _train_parser(kinds, kind, arch, lr)


TRAINERS = (("2d", "an SD-architecture UNet on DATA/2d's captioned images", "1e-5"),
            ("3d", "the Zero-1-to-3 architecture on DATA/3d's view pairs", "1e-4"),
            ("vae", "the KL autoencoder (with a text encoder and scheduler beside it: a whole SD base) "
                    "on DATA/2d's images", "1e-4"),
            ("controlnet", "a normal-map ControlNet for the 2D prior --init on DATA/2d's images "
                           "under DATA/normal's", "1e-5"),
            ("depth", "a depth estimator with the Sapiens depth model's interface on DATA/2d's images and "
                      "DATA/depth's maps", "1e-3"),
            ("normal", "a normal estimator with the Sapiens normal model's interface on DATA/2d's images and "
                       "DATA/normal's maps", "1e-3"))
"""``(kind, what it trains, its default learning rate as the help shows it)`` of ``geneman prior train-KIND``."""
OBJECTIVES = {"vae": "reconstruction MSE and a KL term, AdamW",
              "depth": "MSE of the depth less its mean inside the mask, AdamW, random crops and flips",
              "normal": "1 - cosine inside the mask, AdamW, random crops and flips"}
"""The objective the help names, where it is not the diffusion priors' epsilon objective."""
ESTIMATORS = ("depth", "normal")
"""The kinds that are no diffusion model (``training.train.ESTIMATORS``; not imported: torch waits)."""


def _data_parsers(sub) -> None:
    data = sub.add_parser("data", help="training data: procedural people (synth), renders of meshes (render)")
    what = data.add_subparsers(dest="data_command", required=True)
    sy = what.add_parser("synth", help="write N seeded procedural people as GLB meshes and a manifest.json",
                         description="Write N procedural people (varied bodies, poses, clothes, hair, held objects; "
                                     "textures that differ front and back) as closed GLB meshes with vertex "
                                     "colours, person_0000.glb ..., and DIR/manifest.json with each one's spec. "
                                     "Person i depends only on the seed and i.")
    sy.add_argument("-n", type=int, required=True, metavar="N", help="number of people")
    sy.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="output folder")
    sy.add_argument("--seed", type=int, default=0, metavar="S", help="seed, 0 to 2^63 - 1 (default: %(default)s)")
    sy.add_argument("--voxel", type=float, default=None, metavar="V",
                    help="marching-cubes grid spacing in metres, 0.004 to 0.02 (default: 0.01)")
    common(sy)
    re = what.add_parser("render", help="render a folder of textured meshes into the trainers' data layouts",
                         description="Render every textured mesh of MESHES (GLB, glTF, OBJ or PLY with a base-colour "
                                     "texture or vertex colours; +Y up, facing +Z) from seeded cameras: DATA/2d "
                                     "(captioned images with full, upper-body and close-up crops, for train-2d), "
                                     "DATA/normal and DATA/depth (the same views as normal and depth images, for "
                                     "the adapted models and train-controlnet), DATA/3d (views and every ordered "
                                     "pair with its relative camera, for train-3d) and DATA/manifest.json.")
    re.add_argument("meshes", type=Path, metavar="MESHES", help="folder of meshes (e.g. from `geneman data synth`)")
    re.add_argument("-o", "--out", type=Path, required=True, metavar="DATA", help="new output folder")
    re.add_argument("--size", type=int, default=64, help="image side, pixels (default: %(default)s)")
    re.add_argument("--views-2d", type=int, default=8, metavar="N", help="2D images per mesh (default: %(default)s)")
    re.add_argument("--views-3d", type=int, default=8, metavar="N",
                    help="3D views per mesh, view 00 the reference camera; 0: none (default: %(default)s)")
    re.add_argument("--crop-ratios", type=float, nargs=3, default=(0.5, 0.3, 0.2), metavar=("FULL", "UPPER", "CLOSEUP"),
                    help="probabilities of the 2D crops (default: 0.5 0.3 0.2)")
    re.add_argument("--seed", type=int, default=0, metavar="S", help="seed of cameras and crops (default: %(default)s)")
    common(re)


def _train_parser(kinds, kind: str, arch: str, lr: str) -> None:
    objective = OBJECTIVES.get(kind, "epsilon objective, AdamW, classifier-free condition drop")
    p = kinds.add_parser(f"train-{kind}", help=f"train {arch}",
                         description=f"Train {arch} ({objective}). Rerunning with the same OUT resumes from its "
                                     "newest checkpoint; "
                                     "several processes: `accelerate launch -m pipeline.cli.main prior ...`. "
                                     "OUT ends up holding the weights in the layout the run's priors load.")
    p.add_argument("data", type=Path, metavar="DATA", help="a `geneman data render` output"
                   + (" (or a folder of images with metadata.jsonl)" if kind == "2d" else ""))
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT", help="output folder")
    if kind == "controlnet":
        p.add_argument("--init", required=True, metavar="PRIOR_2D",
                       help="the 2D prior it steers (a train-2d output or an SD 1.5 folder with unet/), frozen")
    elif kind in ESTIMATORS:
        p.add_argument("--init", default="tiny",
                       help=f"tiny (a new estimator) or a train-{kind} output to train on")
    else:
        p.add_argument("--init", default="tiny",
                       help="tiny (from scratch, the tiny architecture at the data's size) or a diffusers folder "
                            "to fine-tune (" + ("Zero-1-to-3 layout" if kind == "3d" else "SD 1.5 layout") + ")")
    if kind == "vae":
        p.add_argument("--decoder-only", action="store_true",
                       help="with --init DIR: train the decoder alone (latents, and the priors trained on them, "
                            "stay valid)")
    if kind in ("2d", "3d"):
        p.add_argument("--base", default="", metavar="DIR",
                       help="with --init tiny: the frozen VAE, text encoder and scheduler of this SD folder "
                            "(a train-vae output) instead of new random ones")
    paper = "the paper's " if kind in ("2d", "3d") else ""
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per step and process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.0, help=f"AdamW learning rate (default: {paper}{lr})")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=0.05, metavar="F",
                   help="linear learning-rate warm-up over this fraction of the steps (default: %(default)s)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="after the warm-up (default: %(default)s: half a cosine down to 0 at the last step)")
    p.add_argument("--ema-decay", type=float, default=0.9999, metavar="D",
                   help="largest decay of the weights' moving average, which is what OUT gets "
                        "(diffusers' EMAModel with warm-up; 0: the last step's weights; default: %(default)s)")
    if kind not in (*ESTIMATORS, "vae"):
        p.add_argument("--uncond-prob", type=float, default=0.1,
                       help="probability of dropping the condition (default: %(default)s)")
    p.add_argument("--general", type=Path, metavar="DIR",
                   help="general data mixed in (" + ("an image folder" if kind in ("2d", "vae") else
                                                     "a `geneman data render` output of other subjects") + ")")
    p.add_argument("--general-ratio", type=float, default=0.0, metavar="R",
                   help="probability that a row is general data (default: %(default)s)")
    p.add_argument("--size", type=int, default=0, help="image side trained at (default: the data's)")
    p.add_argument("--save-every", type=int, default=100, metavar="N", help="checkpoint every N steps")
    p.add_argument("--sample-every", type=int, default=0, metavar="N",
                   help="sample images every N steps into OUT/samples (default: at the end only)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default: %(default)s)")
    common(p)


def cmd_data(args) -> int:
    """``geneman data synth`` and ``geneman data render``."""
    from pipeline.run.progress import Progress

    if args.data_command == "render":
        from training import render

        cfg = render.RenderConfig(size=args.size, views_2d=args.views_2d, views_3d=args.views_3d,
                                  crop_ratios=tuple(args.crop_ratios), seed=args.seed)
        try:
            files = render.check_request(args.meshes, args.out, cfg)
        except ValueError as e:
            raise InputError(str(e)) from None
        progress = Progress("render", len(files), every_s=0.0, quiet=args.quiet, unit="mesh")
        progress.start(0)
        try:
            manifest = render.render_dataset(args.meshes, args.out, cfg, lambda done: progress.update(done, {}))
        except ValueError as e:
            raise InputError(str(e)) from None
        finally:
            progress.close()
        counts = json.loads(manifest.read_text())["counts"]
        print(f"wrote {counts['images_2d']} captioned images and {counts['pairs_3d']} view pairs of "
              f"{counts['subjects']} meshes to {args.out}")
        return 0
    from training import synth

    voxel = synth.VOXEL if args.voxel is None else args.voxel
    try:
        synth.check_request(args.n, args.out, args.seed, voxel)
    except ValueError as e:
        raise InputError(str(e)) from None
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{args.out}: cannot create the output folder ({e.strerror or e})") from None
    progress = Progress("synth", args.n, every_s=0.0, quiet=args.quiet, unit="person")
    progress.start(0)
    try:
        manifest = synth.synth(args.n, args.out, args.seed, voxel, progress=lambda done: progress.update(done, {}))
    finally:
        progress.close()
    print(f"wrote {args.n} people to {args.out} and {manifest}")
    return 0


def _config(args):
    from training.train import TrainConfig

    return TrainConfig(kind=args.prior_command.split("-")[1], steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, uncond_prob=getattr(args, "uncond_prob", 0.1),
                       general_ratio=args.general_ratio,
                       init=args.init, base=getattr(args, "base", ""),
                       decoder_only=getattr(args, "decoder_only", False),
                       size=args.size, save_every=args.save_every, sample_every=args.sample_every, seed=args.seed,
                       warmup=args.warmup, lr_schedule=args.lr_schedule, ema_decay=args.ema_decay)


def _check_resumable(out: Path, wanted: dict) -> None:
    """Refuse an OUT trained with other options (a resume must continue the same run)."""
    path = out / TRAIN_CONFIG
    if not path.is_file():
        return
    try:
        had = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{path} cannot be read; remove OUT or give a new -o") from None
    changed = sorted(k for k in set(had) | set(wanted) if had.get(k) != wanted.get(k))
    if changed:
        shown = ", ".join(f"{k} {had.get(k)!r} -> {wanted.get(k)!r}" for k in changed)
        raise InputError(f"{out} holds a training run with other options ({shown}); give a new -o, or the same "
                         "options to resume it")


def cmd_prior(args) -> int:
    """``geneman prior train-2d|train-3d``: train, checkpointing into OUT/ckpt, resuming from it."""
    from dataclasses import asdict

    from pipeline.run.checkpoint import Checkpointer
    from pipeline.run.progress import Progress
    from pipeline.run.signals import StopSignals
    from pipeline.run.store import atomic_write_bytes
    from training.train import Trainer

    cfg = _config(args)
    wanted = {**asdict(cfg), "data": str(args.data.resolve()),
              "general": str(args.general.resolve()) if args.general else ""}
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"{args.out} is a file; give a folder for the trained prior")
    _check_resumable(args.out, wanted)
    try:
        trainer = Trainer(cfg, args.data, args.out, args.general, command=["geneman", *args.argv])
    except ValueError as e:
        raise InputError(str(e)) from None
    main = trainer.accelerator.is_main_process
    if main:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out / TRAIN_CONFIG, (json.dumps(wanted, indent=1) + "\n").encode())
    trainer.accelerator.wait_for_everyone()
    progress = Progress(f"prior {cfg.kind}", cfg.steps, quiet=args.quiet or not main)
    with StopSignals() as stop:
        ckpt = (Checkpointer if main else _Follower)(args.out / "ckpt", cfg.steps, cfg.save_every, 2, progress, stop)
        try:
            summary = trainer.run(ckpt)
        finally:
            progress.close()
    if main:
        what = {"2d": "the 2d prior", "3d": "the 3d prior", "depth": "the depth estimator",
                "normal": "the normal estimator"}.get(cfg.kind, f"the {cfg.kind}")
        print(f"trained {what} for {cfg.steps} steps: loss {summary['loss_first_20']} (first 20) -> "
              f"{summary['loss_last_20']} (last 20); weights in {args.out}; use it with {summary['use']}")
    return 0


class _Follower:
    """The checkpoint handle of a process other than the main one: resumes from the main one's
    checkpoints, never writes, and stops on a stop signal at the same step boundary."""

    def __init__(self, folder, total, every, keep, progress, stop):
        from pipeline.run.checkpoint import Checkpointer

        self._inner = Checkpointer(folder, total, every, keep, progress, stop)
        self.folder, self.total, self.every = folder, total, every

    def resume(self, objects):
        return self._inner.resume(objects)

    def step_done(self, step, losses, objects):
        from pipeline.errors import Interrupted

        if self._inner.stop.requested is not None and step < self.total:
            raise Interrupted(f"stopped by {self._inner.stop.name} at step {step}/{self.total}")
