"""Where the packages' log lines go: one stderr handler for the ``geneman``, ``priors`` and ``stages`` loggers.

Shared by the command line (:mod:`pipeline.cli.main`) and batch jobs (:mod:`pipeline.batch.job`);
imports nothing of the package.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

LOGGERS = ("geneman", "priors", "stages")
"""The loggers of the packages (pipeline logs as ``geneman``; priors and stages by module name)."""


def setup_logging(debug: bool, quiet: bool) -> Callable[[], None]:
    """Log to stderr: short lines on a terminal, timestamped lines otherwise.

    Returns:
        A function that puts the loggers back as they were (for callers that run in a longer-lived
        process, such as tests calling :func:`pipeline.cli.main.main`, so that no handler outlives its stderr).
    """
    handler = logging.StreamHandler(sys.stderr)
    fmt = "geneman: %(message)s" if sys.stderr.isatty() else "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    before = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        before.append((logger, list(logger.handlers), logger.propagate, logger.level))
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)

    def restore() -> None:
        for logger, handlers, propagate, level in before:
            logger.handlers[:] = handlers
            logger.propagate, logger.level = propagate, level

    return restore
