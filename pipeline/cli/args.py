"""Argument helpers every sub-command shares: the common flags, the config flags, ``--set`` values.

Imports nothing of the package, so that :mod:`pipeline.cli.main` and :mod:`pipeline.cli.tools`
both use it without importing each other.
"""
from __future__ import annotations

import argparse


def common(p: argparse.ArgumentParser) -> None:
    """Add ``--debug`` and ``--quiet``."""
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors, no progress")


def config_args(p: argparse.ArgumentParser, preset_default: str | None) -> None:
    """Add the flags that make a run config: ``--preset --config --set --device --weights``."""
    p.add_argument("--preset", default=preset_default, help="paper, release, cpu or demo (default: %(default)s)")
    p.add_argument("--config", help="YAML file merged over the preset")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set geometry_init.steps=100 (repeatable)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the config's device)")
    p.add_argument("--weights", metavar="DIR", help="folder of pretrained weights, <DIR>/<hub id>/<file> "
                   "(default: priors.weights_dir, else the Hugging Face cache)")
    trust_args(p)


def trust_args(p: argparse.ArgumentParser) -> None:
    """Add the flags that trust weight files for this invocation only (never stored in a run folder)."""
    p.add_argument("--trust-weights", action="store_true",
                   help="load TorchScript weights (Sapiens) whose sha256 is not a released file's: they run code")
    p.add_argument("--trust-prior-3d-pickle", action="store_true",
                   help="fully unpickle the 3D prior's last.ckpt when it holds more than tensors: it runs code")


def apply_trust(cfg, args: argparse.Namespace):
    """Set the trust flags of this invocation on ``cfg.priors``; return ``cfg``."""
    cfg.priors.trust_weights = bool(getattr(args, "trust_weights", False))
    cfg.priors.trust_prior_3d_pickle = bool(getattr(args, "trust_prior_3d_pickle", False))
    return cfg


def cli_sets(args: argparse.Namespace) -> list[str]:
    """``--set`` values plus what ``--device`` and ``--weights`` stand for."""
    sets = list(args.sets)
    if getattr(args, "device", None):
        sets.append(f"device={args.device}")
    if getattr(args, "weights", None):
        sets.append(f"priors.weights_dir={args.weights}")
    return sets
