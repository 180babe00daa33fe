"""The first code a batch job's python runs: catch Slurm's warning signal before submitit can.

Slurm's ``--signal=USR2@N`` may come up to a minute earlier than asked, and with short time limits
that can be while the job's python is still importing (torch alone takes seconds), before
submitit has installed its handler; SIGUSR2's default action would then kill the job, with no
requeue. So the job runs as ``python -u -m pipeline.batch.boot -u -m submitit.core._submit FOLDER``:
this module installs handlers that only note the first signal, in the environment variable
:data:`EARLY_SIGNAL` (this file runs as ``__main__``; a later ``import`` of it would see fresh
globals), then runs submitit's entry point as ``python -m`` would. Once the job's callable runs,
:func:`take_early_signal` hands the noted signal to it (:class:`pipeline.batch_job.BatchJob`
requeues or stops without starting an image).

Import nothing heavy here: the point is to run before the slow imports.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys

EARLY_SIGNAL = "GENEMAN_EARLY_SIGNAL"
"""Environment variable holding the number of the first signal caught before the job's callable ran."""
PREEMPT_SIGNAL = signal.SIGUSR2
"""What Slurm sends before the time limit (submitit's ``--signal=USR2@N``): checkpoint and requeue."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
"""What stops a job (also geneman's own stop signals); SIGTERM requeues only a preempted job."""
CAUGHT = (PREEMPT_SIGNAL, *STOP_SIGNALS)
"""The signals a batch job acts on."""


def _note(signum, frame) -> None:
    os.environ.setdefault(EARLY_SIGNAL, str(int(signum)))


def take_early_signal() -> int | None:
    """The signal noted before the job's callable ran (None if none), cleared so it counts once."""
    value = os.environ.pop(EARLY_SIGNAL, "")
    return int(value) if value.isdigit() else None


def python_command(python: str) -> str:
    """What submitit should use as ``python`` so that a job starts through this module."""
    return f"{python} -u -m pipeline.batch.boot"


def main(argv: list[str]) -> None:
    """Run ``[-u] -m MODULE ARGS...`` (what submitit appends to its python command) as python would."""
    os.environ.pop(EARLY_SIGNAL, None)  # a value inherited from elsewhere is not this job's signal
    for s in CAUGHT:
        signal.signal(s, _note)
    args = list(argv)
    while args and args[0] == "-u":  # already unbuffered: this process was started with -u
        args.pop(0)
    if len(args) < 2 or args[0] != "-m":
        raise SystemExit(f"pipeline.batch.boot: expected '-m MODULE ARGS...', got {' '.join(argv)!r}")
    module = args[1]
    sys.argv = [module, *args[2:]]  # run_module puts the module's file in argv[0], as python -m does
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
