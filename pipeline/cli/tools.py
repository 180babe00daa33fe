"""``geneman weights check|pull`` and ``geneman profile``: the priors' tools on the command line.

The config and the priors are imported inside the commands, for start-up speed only (torch,
diffusers): :mod:`pipeline.cli.main` builds these parsers on every ``geneman`` call.
"""
from __future__ import annotations

import argparse

from pipeline.cli.args import cli_sets, common, config_args


def add_parsers(sub) -> None:
    """Add ``weights`` and ``profile`` to the sub-command parser ``sub``."""
    w = sub.add_parser("weights", help="list (check) or download (pull) the pretrained weights a preset needs")
    w.add_argument("action", choices=("check", "pull"))
    w.add_argument("--stage", dest="stages", action="append",
                   help="only the weights of this stage, or of `eval` (geneman eval's CLIP and LPIPS) "
                        "(repeatable; default: every stage and eval)")
    config_args(w, "release")
    common(w)
    p = sub.add_parser("profile", help="count FLOPs per stage and network for one avatar (no weights needed)")
    config_args(p, "release")
    common(p)


def _config(args):
    from pipeline.config import load_config

    return load_config(args.preset, args.config, cli_sets(args))


def cmd_weights(args: argparse.Namespace) -> int:
    """Print the weight report (check; exit 2 when something needed is missing) or download (pull).

    Without ``--stage`` it covers every stage and the ``eval`` group (:data:`priors.weights.GROUPS`).
    """
    from pipeline.run.runner import DEFAULT_STAGES, check_stage_name
    from priors import weights

    cfg = _config(args)
    stages = args.stages or list(weights.GROUPS)
    for name in stages:
        if name not in weights.GROUP_WEIGHTS:
            check_stage_name(name, DEFAULT_STAGES)
    if args.action == "pull":
        for line in weights.pull(cfg.priors, stages, cfg):
            print(line)
        args.action = "check"
    rows = weights.check(cfg.priors, stages, cfg)
    print(weights.format_report(rows))
    return 0 if all(r.found or r.optional for r in rows) else 2


def cmd_profile(args: argparse.Namespace) -> int:
    """Print the FLOP table of the chosen preset."""
    from priors import profile

    print(f"FLOPs of one avatar, preset {args.preset}, in PFLOP (1e15):")
    print(profile.format_table(profile.profile_avatar(_config(args))))
    return 0
