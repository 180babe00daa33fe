"""The ``geneman`` command: run, resume, status, export, batch, weights, profile, bench, eval, data, prior.

Errors print one line and exit non-zero (2: bad input or config, 3: a stage not built yet,
75: stopped by a signal, resumable, 1: anything else; 141: stdout closed by its reader, as ``| head`` does,
quietly); ``--debug`` shows tracebacks.

Each ``cmd_*`` imports what its command needs inside it, for start-up speed only:
:mod:`pipeline.config` pulls in torch and the stages (seconds), :mod:`pipeline.run.session`
diffusers too (over ten seconds on a small CPU), and ``geneman --help`` or a mistyped flag should
not wait for them. Nothing here imports this module back.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from pipeline.cli import tools as cli_tools
from pipeline.cli import train as cli_train
from pipeline.cli.args import apply_trust, cli_sets, common, config_args, trust_args
from pipeline.errors import ConfigError, GenemanError
from pipeline.logs import setup_logging

log = logging.getLogger("geneman")

EXPORT_FORMATS = ("glb", "obj", "turntable", "preview")
"""``geneman export --format`` choices: :data:`stages.final.FORMATS`, written out so that ``--help`` does not
import torch (a test checks that the two agree)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="geneman", description="One photo of a person -> textured 3D mesh (GeneMAN).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a photo into a run folder")
    run.add_argument("image", type=Path, help="the photo (RGB, or RGBA whose alpha is the person mask)")
    run.add_argument("-o", "--out", type=Path, required=True, help="run folder")
    run.add_argument("--mask", type=Path, help="person mask (white = person), same size as the photo")
    run.add_argument("--from-stage", help="redo from this stage on (preprocess, geometry_init, ...)")
    run.add_argument("--until", metavar="STAGE", help="stop after this stage (e.g. preprocess); resume continues")
    config_args(run, "release")
    common(run)
    res = sub.add_parser("resume", help="continue a run folder where it stopped")
    res.add_argument("out", type=Path, help="run folder")
    res.add_argument("--from-stage", help="redo from this stage on")
    res.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="change a config value of the run (invalidates that stage and later ones)")
    res.add_argument("--device", help="cpu, cuda or cuda:N")
    res.add_argument("--weights", metavar="DIR", help="folder of pretrained weights (the run folder's are not used)")
    trust_args(res)
    common(res)
    st = sub.add_parser("status", help="show where run folders stand")
    st.add_argument("out", type=Path, nargs="+", help="run folder(s)")
    common(st)
    _report_parser(sub)
    _batch_parser(sub)
    cli_tools.add_parsers(sub)
    be = sub.add_parser("bench", help="measure the stages on a ground-truth mesh (oracle guidance: no weights; "
                                      "or the preset's own priors)")
    be.add_argument("--subject", required=True,
                    help="a GLB, OBJ or PLY mesh (+Y up, facing +Z), a built-in subject (skirt, held_object, "
                         "half_body, thin_limbs, front_back) or a generated person, synth:SEED:INDEX (person INDEX "
                         "of `geneman data synth --seed SEED`)")
    be.add_argument("--guidance", choices=("oracle", "priors"), default="oracle",
                    help="oracle (default): the subject's own renders answer the guidance and its true depth and "
                         "normal replace Sapiens'; priors: the preset's own priors and depth/normal source, as "
                         "`geneman run` uses them (the truth only scores)")
    be.add_argument("-o", "--out", type=Path, required=True, help="bench folder (bench.json, recon.glb, run/)")
    be.add_argument("--from-stage",
                    help="in a bench folder that has run: redo from this stage on (e.g. texture_coarse, "
                         "to try texture settings on the same geometry)")
    be.add_argument("--until", metavar="STAGE",
                    help="run and score the stages up to this one only (e.g. geometry_init, to try stage-1 "
                         "settings in minutes); the appearance figures need the last stage")
    config_args(be, "cpu")
    common(be)
    ex = sub.add_parser("export", help="rewrite final/ of a finished run from its last stage's result",
                        description="Rewrite final/ in the run folder from its last stage's result: avatar.glb, "
                                    "avatar.obj (+ .mtl, texture .png), turntable.mp4, preview.png, at the sizes "
                                    "of the run's config.yaml (export.*).")
    ex.add_argument("out", type=Path, help="run folder")
    ex.add_argument("--format", choices=EXPORT_FORMATS, action="append",
                    help="write only this (repeat for more): glb, obj, turntable or preview "
                         "(default: the run's export.formats; other files in final/ are left as they are)")
    common(ex)
    _eval_parser(sub)
    cli_train.add_parsers(sub)
    return parser


def _report_parser(sub) -> None:
    """``geneman report``."""
    rp = sub.add_parser("report", help="write the HTML page of a run, bench or batch folder (OUT/report.html, a "
                                       "batch's OUT/index.html)",
                        description="Write OUT/report.html (a batch folder: OUT/index.html and every run's "
                                    "report.html) from the folder's own files; runs write theirs after every stage. "
                                    "The page works offline, opened from disk.")
    rp.add_argument("out", type=Path, nargs="+", help="run, bench or batch folder(s)")
    common(rp)


def _eval_parser(sub) -> None:
    """The ``eval`` sub-command (logic in pipeline/run/evaluate.py)."""
    ev = sub.add_parser("eval", help="the paper's protocol on a finished run: PSNR, LPIPS, CLIP similarity "
                                     "-> OUT/eval.json")
    ev.add_argument("out", type=Path, help="run folder (its last stage done)")
    ev.add_argument("--photo", type=Path, required=True, help="the input photo (the run's own: its preprocessed "
                    "copy in OUT/00_preprocess is the reference; another photo is preprocessed the run's way)")
    ev.add_argument("--resolution", type=int, default=512, metavar="N",
                    help="render side in pixels (default: %(default)s)")
    ev.add_argument("--no-clip", action="store_true", help="skip the CLIP similarity (no CLIP weights needed)")
    ev.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value for this evaluation, e.g. --set priors.clip_eval=ID")
    ev.add_argument("--device", help="cpu, cuda or cuda:N (default: the run's device)")
    ev.add_argument("--weights", metavar="DIR", help="folder of pretrained weights (the run folder's are not used)")
    common(ev)


def _batch_parser(sub) -> None:
    """The ``batch`` sub-command (logic in pipeline/batch/submit.py)."""
    b = sub.add_parser("batch", help="run many photos as Slurm jobs (or local jobs), one run folder each")
    b.add_argument("inputs", nargs="+", help="photos, folders of photos, list files (.txt, one path a line) or globs")
    b.add_argument("-o", "--out", type=Path, required=True, help="batch folder (one run folder per photo inside)")
    b.add_argument("--executor", choices=("slurm", "local"), default="slurm", help="default: %(default)s")
    b.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    b.add_argument("--gpus-per-job", type=int, default=0, metavar="N", help="GPUs per job (default: none)")
    b.add_argument("--time", default=None, metavar="HH:MM:SS",
                   help="time limit per job (Slurm default here: 24:00:00; local: none)")
    b.add_argument("--mem", metavar="M", help="memory per job, Slurm syntax, e.g. 32G")
    b.add_argument("--cpus-per-job", type=int, metavar="N", help="CPUs per job")
    b.add_argument("--max-parallel", type=int, default=0, metavar="K",
                   help="jobs running at once (default: Slurm's choice; local: 1)")
    b.add_argument("--images-per-job", type=int, default=1, metavar="M",
                   help="images each job runs in turn, loading the priors once (default: %(default)s)")
    config_args(b, "release")
    common(b)


def cmd_run(args) -> int:
    from pipeline.config import load_config
    from pipeline.run import session

    sets = cli_sets(args)
    cfg = apply_trust(load_config(args.preset, args.config, sets), args)
    session.start(args.image, args.out, cfg, mask=args.mask, from_stage=args.from_stage, quiet=args.quiet,
                  until=args.until)
    log.info("stopped after %s: %s" if args.until else "done: %s", *([args.until] if args.until else []), args.out)
    return 0


def cmd_resume(args) -> int:
    from pipeline.run import session

    session.RunStore(args.out).load()
    cfg = apply_trust(session.load_run_config(args.out, cli_sets(args)), args)
    session.resume(args.out, from_stage=args.from_stage, quiet=args.quiet, cfg=cfg)
    log.info("done: %s", args.out)
    return 0


def cmd_batch(args) -> int:
    from pipeline.batch.status import batch_rows, summary
    from pipeline.batch.submit import BatchOptions, submit_batch
    from pipeline.config import load_config
    from pipeline.run.store import lock_holder

    sets = cli_sets(args)
    cfg = apply_trust(load_config(args.preset, args.config, sets), args)
    time_limit = args.time or ("24:00:00" if args.executor == "slurm" else None)
    options = BatchOptions(executor=args.executor, partition=args.partition, gpus_per_job=args.gpus_per_job,
                           time=time_limit, mem=args.mem, cpus_per_job=args.cpus_per_job,
                           max_parallel=args.max_parallel, images_per_job=args.images_per_job)
    done = submit_batch(args.inputs, args.out, cfg, options, quiet=args.quiet)
    if args.executor == "slurm":
        print(f"submitted {len(done['todo'])} image(s) in job(s) {' '.join(done['jobs']) or '-'}; "
              f"{len(done['skipped'])} skipped; follow with `geneman status {args.out}`")
        return 0
    rows = batch_rows(args.out, lambda r: lock_holder(r) is not None)
    print(f"ran {len(done['todo'])} image(s), {len(done['skipped'])} skipped; {summary(rows)}; "
          f"details: `geneman status {args.out}`")
    return 0 if all(row[3] == "done" for row in rows) else 1


def cmd_bench(args) -> int:
    from pipeline.bench import run_bench
    from pipeline.config import load_config

    cfg = apply_trust(load_config(args.preset, args.config, cli_sets(args)), args)
    report = run_bench(args.subject, args.out, cfg, quiet=args.quiet, from_stage=args.from_stage,
                       guidance=args.guidance, until=args.until)
    keys = ("fscore", "fscore_5", "normal_consistency", "chamfer_l1", "iou", "iou_back", "iou_ref", "psnr",
            "psnr_back", "ssim")
    print(" ".join(f"{k}={report[k]:.4f}" for k in keys if k in report) + f" wall_s={report['wall_s']}")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'recon.glb'}")
    return 0


def cmd_status(args) -> int:
    from pipeline.cli.status import print_status

    return print_status(args.out, sys.stdout, sys.stderr)


def cmd_report(args) -> int:
    from pipeline.report.write import write_report

    for out in args.out:
        for page in write_report(out):
            print(page)
    return 0


def cmd_export(args) -> int:
    from pipeline.run.export import export_run

    for path in export_run(args.out, args.format):
        print(path)
    return 0


def cmd_eval(args) -> int:
    from pipeline.run import session
    from pipeline.run.evaluate import EVAL_FILE, EvalOptions, evaluate_run

    session.RunStore(args.out).load()
    if args.resolution < 16 or args.resolution > 4096:
        raise ConfigError(f"--resolution {args.resolution} is out of range; give 16 to 4096 pixels")
    cfg = session.load_run_config(args.out, cli_sets(args))
    report = evaluate_run(args.out, args.photo, cfg, EvalOptions(args.resolution, not args.no_clip, quiet=args.quiet))
    shown = {k: report[k] for k in ("psnr_ref", "lpips_ref", "clip_similarity")}
    print(" ".join(f"{k}={'null' if v is None else f'{v:.4f}'}" for k, v in shown.items()))
    print(f"wrote {args.out / EVAL_FILE}")
    return 0


COMMANDS = {"run": cmd_run, "resume": cmd_resume, "status": cmd_status, "export": cmd_export, "batch": cmd_batch,
            "weights": cli_tools.cmd_weights, "profile": cli_tools.cmd_profile, "bench": cmd_bench,
            "eval": cmd_eval, "data": cli_train.cmd_data, "report": cmd_report,
            "prior": cli_train.cmd_prior}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``geneman`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    restore_logging = setup_logging(args.debug, args.quiet)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so that a closed pipe is met below and not at interpreter exit
        return code
    except BrokenPipeError:  # `geneman status OUT | head`: the reader has gone; end quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError):  # what is left to flush at exit goes nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except GenemanError as e:
        if args.debug:
            log.exception("error")
        print(f"geneman: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("geneman: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence: one line unless --debug
        if args.debug:
            raise
        print(f"geneman: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
