"""``geneman batch``: a folder of photos as a Slurm job array (or local jobs), one run folder per photo.

Layout of a batch folder::

    OUT/batch.json     inputs, settings and every submission with its job ids
    OUT/<name>/        the run folder of photo <name> (its stem), resumable as usual
    OUT/logs/          submitit's pickles and job logs

Each job loads the priors once and runs its images in turn (:mod:`pipeline.batch.job`).
Submitting the same batch again skips images already done and images whose job is still queued
or running.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from pipeline.batch.boot import python_command
from pipeline.batch.job import BatchJob, is_done
from pipeline.batch.record import (
    ACTIVE_SLURM_STATES,
    BATCH_FILE,
    LOGS,
    load_record,
    process_tag,
    save_record,
    slurm_states,
)
from pipeline.batch.status import refresh_index
from pipeline.config import RunConfig
from pipeline.errors import ConfigError, InputError, Interrupted
from pipeline.run.runner import DEFAULT_STAGES, StageSpec
from pipeline.run.store import RunStore, lock_holder, now

log = logging.getLogger("geneman")

RESERVED = {BATCH_FILE, LOGS}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
LIST_SUFFIXES = {".txt", ".lst", ".list"}
LOCAL_TIME_MIN = 30 * 24 * 60
"""Time limit of a local job when ``--time`` is not given (submitit's local default is 2 minutes)."""
LOCAL_STOP_GRACE_S = 60.0
"""Seconds a local job gets, after Ctrl-C, to checkpoint and end before it is killed."""
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a local batch as Ctrl-C does (``kill PID``, a closed terminal): its jobs checkpoint and end."""


@dataclass
class BatchOptions:
    """How the jobs are submitted (the ``geneman batch`` flags)."""

    executor: str = "slurm"
    """slurm (a job array) or local (jobs on this machine)."""
    partition: str | None = None
    """Slurm partition (default: the cluster's default)."""
    gpus_per_job: int = 0
    """GPUs per job (Slurm ``--gpus-per-node``); 0 asks for none."""
    time: str | None = None
    """Time limit per job, ``[D-]HH:MM:SS`` or minutes; Slurm's default when None."""
    mem: str | None = None
    """Memory per job, Slurm syntax (``32G``)."""
    cpus_per_job: int | None = None
    """CPUs per job (Slurm ``--cpus-per-task``)."""
    max_parallel: int = 0
    """Jobs running at once (Slurm array ``%K``; local: K processes); 0: Slurm's choice, local 1."""
    images_per_job: int = 1
    """Images each job runs in turn (the priors are loaded once per job)."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which Slurm sends SIGUSR2 (checkpoint and requeue)."""
    setup: tuple[str, ...] = ()
    """Shell lines each job runs before Python starts (``module load cuda``, exports)."""


def resolve_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The photos named by folders, list files, globs or plain paths, in order, without repeats.

    Raises:
        InputError: an input matches nothing.
    """
    found: list[Path] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found += read_list_file(path)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"the pattern {item!r} matches no file")
            found += matches
        else:
            raise InputError(f"input not found: {item} (give photos, folders of photos, list files or globs)")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise InputError(f"no photos found in {', '.join(map(str, inputs))} "
                         f"(suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return unique


def read_list_file(path: Path) -> list[Path]:
    """Photo paths of a list file: one a line, relative to the file's folder; blanks and ``#`` lines skipped."""
    photos = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            photos.append(p if p.is_absolute() else path.parent / p)
    return photos


def run_names(photos: Sequence[Path], out: Path) -> list[tuple[str, Path]]:
    """``(name, photo)`` pairs: the run folder ``out/name`` of each photo is named by its stem.

    Raises:
        InputError: a name would escape ``out`` or clash with its reserved entries, or two photos
            share a name (also when they differ only by case).
    """
    named, seen = [], {}
    for photo in photos:
        name = photo.stem
        check_name(name, photo, out)
        key = name.casefold()
        if key in seen:
            raise InputError(f"{seen[key]} and {photo} would share the run folder {out / name}; "
                             "rename one of them (run folders are named by the photo's stem)")
        seen[key] = photo
        named.append((name, photo))
    return named


def check_name(name: str, photo: Path, out: Path) -> None:
    """Raise InputError when ``out/name`` is not a plain new entry of ``out``."""
    bad = (not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
           or "\x00" in name or re.search(r"[\x00-\x1f]", name))
    if bad or (out / name).resolve().parent != out.resolve():
        raise InputError(f"{photo}: its name {name!r} would escape {out} or be hidden; rename the photo")
    if name in RESERVED:
        raise InputError(f"{photo}: its name {name!r} is reserved in a batch folder ({', '.join(sorted(RESERVED))}); "
                         "rename the photo")


def parse_time(text: str) -> int:
    """Minutes (rounded up) of a Slurm time: ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS`` or ``D-HH``.

    >>> parse_time("01:30:00"), parse_time("90"), parse_time("1-00:00:30")
    (90, 90, 1441)
    """
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ConfigError(f"--time {text!r}: use HH:MM:SS, D-HH:MM:SS or minutes")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is None and b is None:
        seconds = a * 60
    elif c is None and b is not None and days is None:
        seconds = a * 60 + b  # MM:SS
    else:
        seconds = (days or 0) * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if seconds <= 0:
        raise ConfigError(f"--time {text!r} must be positive")
    return math.ceil(seconds / 60)


def plan(out: Path, named: Sequence[tuple[str, Path]], record: dict, cfg: RunConfig) -> tuple[list, dict[str, str]]:
    """Split the images into those to submit and those skipped (with why).

    Skipped: runs done with the same config, and images whose job Slurm still lists as active.

    Raises:
        InputError: a name was given to another photo in an earlier submission to ``out``.
    """
    held = record.get("images", {})
    for name, photo in named:
        old = held.get(name, {}).get("photo")
        if old and Path(old) != photo:
            raise InputError(f"{photo}: {out / name} already belongs to {old} in this batch; rename the photo "
                             "or use another -o folder")
    slurm_jobs = [held[n].get("job_id", "") for n, _ in named if held.get(n, {}).get("executor") == "slurm"]
    active = slurm_states(slurm_jobs)
    if active is None and any(slurm_jobs):
        raise ConfigError(f"cannot ask squeue whether earlier jobs of {out} are still queued or running "
                          f"({', '.join(sorted({j for j in slurm_jobs if j}))}); retry where squeue answers, "
                          "so that no image runs twice")
    active = active or {}
    todo, skipped = [], {}
    for name, photo in named:
        job = held.get(name, {}).get("job_id", "")
        if is_done(out / name, cfg):
            skipped[name] = "done"
        elif active.get(job) in ACTIVE_SLURM_STATES:
            skipped[name] = f"job {job} {active[job].lower()}"
        else:
            todo.append((name, photo))
    return todo, skipped


def chunks(items: Sequence, size: int) -> list[list]:
    """``items`` cut into consecutive lists of ``size`` (the last one shorter)."""
    if size < 1:
        raise ConfigError(f"--images-per-job must be at least 1, got {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def make_executor(out: Path, options: BatchOptions):
    """A submitit executor writing its files to ``out/logs``, with the job parameters of ``options``."""
    folder = Path(out) / LOGS / "%j"
    if options.executor == "local":
        ex = submitit.LocalExecutor(folder=folder, python=python_command(shlex.quote(sys.executable)))
        minutes = parse_time(options.time) if options.time else LOCAL_TIME_MIN
        # no setup lines: no shell between us and submitit's controller, whose pid is then the job id
        # and which passes our SIGTERM on to the job (run_local puts the package on PYTHONPATH instead)
        ex.update_parameters(timeout_min=minutes, signal_delay_s=options.signal_delay_s, setup=list(options.setup))
        return ex
    if options.executor != "slurm":
        raise ConfigError(f"--executor {options.executor!r}: use slurm or local")
    if shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm: sbatch not found on this machine; run on a Slurm login node, "
                          "or use --executor local")
    ex = submitit.SlurmExecutor(folder=folder, python=python_command(shlex.quote(sys.executable)))
    setup = [f"export PYTHONPATH={shlex.quote(str(package_root()))}${{PYTHONPATH:+:$PYTHONPATH}}", *options.setup]
    params: dict[str, Any] = {"signal_delay_s": options.signal_delay_s, "setup": setup, "job_name": "geneman",
                              "additional_parameters": {"requeue": True}}  # allow scontrol requeue where JobRequeue=0
    for key, value in (("partition", options.partition), ("mem", options.mem), ("cpus_per_task", options.cpus_per_job),
                       ("gpus_per_node", options.gpus_per_job or None),
                       ("time", parse_time(options.time) if options.time else None),
                       ("array_parallelism", options.max_parallel or None)):
        if value is not None:
            params[key] = value
    ex.update_parameters(**params)
    return ex


def package_root() -> Path:
    """The folder holding the ``pipeline`` package (a job puts it on PYTHONPATH, with ``tests`` beside it)."""
    return Path(__file__).resolve().parents[2]


def submit_batch(inputs: Sequence[str | Path], out: Path, cfg: RunConfig, options: BatchOptions,
                 stages: Sequence[StageSpec] = DEFAULT_STAGES, priors_factory: Callable[[], Any] | None = None,
                 quiet: bool = False) -> dict:
    """Check the inputs, submit the images not done yet, record the submission in ``out/batch.json``.

    With the local executor this returns once every job has ended.

    Returns:
        ``{"jobs": [job ids], "todo": [names], "skipped": {name: why}}``.

    Raises:
        InputError: inputs missing, or names that collide or escape ``out``.
        ConfigError: bad options, or no Slurm on this machine.
    """
    out = Path(out).resolve()
    named = run_names(resolve_inputs(inputs), out)
    chunks(named, options.images_per_job)  # checks the options before anything is written
    if options.time:
        parse_time(options.time)
    check_batch_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / LOGS).mkdir(mode=0o700, exist_ok=True)  # submitit's job pickles are fully unpickled: user only
    (out / LOGS).chmod(0o700)
    with RunStore(out).lock():
        record = load_record(out)
        todo, skipped = plan(out, named, record, cfg)
        for name, why in skipped.items():
            log.info("batch: skipping %s (%s)", name, why)
        for name, photo in named:
            record["images"].setdefault(name, {})["photo"] = str(photo)
        groups = chunks(todo, options.images_per_job)
        jobs = [BatchJob(out, [(n, str(p)) for n, p in g], cfg, tuple(stages), priors_factory, quiet) for g in groups]
        submission = {"time": now(), "options": asdict(options), "job_ids": [], "images": len(todo)}
        record["submissions"].append(submission)
        if jobs:
            executor = make_executor(out, options)
            launch = run_local if options.executor == "local" else submit_slurm
            launch(out, record, executor, groups, jobs, options)
        save_record(out, record)
    refresh_index(out, lambda r: lock_holder(r) is not None)
    log.info("batch: %d image(s) in %d job(s) %s; %d skipped", len(todo), len(submission["job_ids"]),
             " ".join(submission["job_ids"]), len(skipped))
    return {"jobs": submission["job_ids"], "todo": [n for n, _ in todo], "skipped": skipped}


def check_batch_folder(out: Path) -> None:
    """Refuse an ``out`` that is a file, a run folder, or a non-empty folder that is no batch folder.

    Raises:
        InputError: naming the folder and what to do.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder; choose another -o folder")
    if not out.is_dir() or (out / BATCH_FILE).is_file():
        return
    if (out / "run.json").is_file():
        raise InputError(f"{out} is a run folder of `geneman run`, not a batch folder; choose another -o folder")
    if any(p.name != ".lock" for p in out.iterdir()):
        raise InputError(f"{out} exists, is not empty and is not a batch folder (no {BATCH_FILE}); "
                         "choose an empty or new -o folder")


def _note_job(out: Path, record: dict, group: list, job, options: BatchOptions) -> None:
    """Record that ``job`` runs the images of ``group`` (batch.json is rewritten at once).

    A local job's images also get its pid (:func:`pipeline.batch.record.process_tag`), which
    ``geneman status`` checks: a job that died leaves its images ``stopped``, not ``queued``.
    """
    submission = record["submissions"][-1]
    submission["job_ids"].append(job.job_id)
    tag = process_tag(int(job.job_id)) if options.executor == "local" else {}
    for name, _ in group:
        record["images"][name].update({"job_id": job.job_id, "executor": options.executor,
                                       "submission": len(record["submissions"]) - 1, **tag})
    save_record(out, record)


def submit_slurm(out: Path, record: dict, executor, groups: list, jobs: list, options: BatchOptions) -> None:
    """Submit ``jobs`` as one Slurm job array and record their ids.

    Raises:
        ConfigError: sbatch refused the jobs (its message says why: partition, time, memory...).
    """
    try:
        submitted = executor.submit_array(jobs)
    except (FailedJobError, FailedSubmissionError) as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(f"sbatch refused the jobs: {lines[-1] if lines else e}") from None
    for group, job in zip(groups, submitted):
        _note_job(out, record, group, job, options)


def run_local(out: Path, record: dict, executor, groups: list, jobs: list, options: BatchOptions) -> None:
    """Run ``jobs`` on this machine, ``options.max_parallel`` (default 1) at a time; return when all ended.

    Images waiting for a job are recorded with this process's pid, each started job's images with
    the job's pid. Ctrl-C (SIGINT to this process), SIGTERM or SIGHUP (:data:`FORWARDED_SIGNALS`) stops
    the running jobs: each gets SIGTERM, writes a checkpoint at its next step and ends (killed after
    :data:`LOCAL_STOP_GRACE_S` or a second signal); running the same command again continues them.

    Raises:
        Interrupted: after the signal, once the jobs have ended (one line: how many were stopped).
    """
    k = max(1, options.max_parallel or 1)
    pending, running = list(zip(groups, jobs)), []
    waiting = {"job_id": "", "executor": "local", **process_tag(os.getpid())}
    for group in groups:
        for name, _ in group:
            record["images"][name].update(waiting)
    save_record(out, record)
    with _signals_as_interrupt():
        try:
            while pending or running:
                running = [j for j in running if not j.done()]
                while pending and len(running) < k:
                    group, job = pending.pop(0)
                    started = _start_local(executor, job)
                    _note_job(out, record, group, started, options)
                    running.append(started)
                time.sleep(0.2)
        except KeyboardInterrupt as e:
            why = f" ({e.args[0]})" if isinstance(e, StopSignal) else ""
            stopped = stop_local_jobs([j for j in running if not j.done()])
            raise Interrupted(f"stopped {stopped} local job(s) of {out} after their last checkpoint{why}; run the "
                              "same command again to continue") from None
        finally:
            _remove_empty(out / LOGS / "%j")


class StopSignal(KeyboardInterrupt):
    """A :data:`FORWARDED_SIGNALS` signal to a local batch, raised where Ctrl-C raises KeyboardInterrupt."""


@contextlib.contextmanager
def _signals_as_interrupt():
    """While the block runs (in the main thread), SIGTERM and SIGHUP raise :class:`StopSignal`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise StopSignal(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handle) for s in FORWARDED_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _start_local(executor, job):
    """``executor.submit(job)`` with the package on PYTHONPATH and SIGINT and SIGHUP ignored by the job's controller.

    submitit's controller shares our terminal: a Ctrl-C would also reach it and it would print a
    KeyboardInterrupt traceback and kill the job a second later, before its checkpoint (and a closed
    terminal's SIGHUP would kill both at once). Ignoring SIGINT and SIGHUP while it starts makes it
    inherit that (the job's own Python catches SIGINT again, :mod:`pipeline.batch.boot`);
    :func:`stop_local_jobs` stops the jobs instead.
    """
    root = str(package_root())
    env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root + (os.pathsep + env if env else "")
    main_thread = threading.current_thread() is threading.main_thread()
    ignored = (signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in ignored} if main_thread else {}
    try:
        return executor.submit(job)
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        if env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env


def stop_local_jobs(jobs: list, grace_s: float | None = None) -> int:
    """SIGTERM each running local job (its controller passes it on), wait for all to end, kill what is left.

    Returns:
        How many jobs were stopped.
    """
    grace_s = LOCAL_STOP_GRACE_S if grace_s is None else grace_s
    for job in jobs:
        with contextlib.suppress(OSError):
            os.kill(int(job.job_id), signal.SIGTERM)
    log.warning("batch: stopping %d local job(s) (%s) at their next step checkpoint; a second signal kills them",
                len(jobs), " ".join(j.job_id for j in jobs))
    deadline = time.monotonic() + grace_s
    try:
        while any(not j.done() for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    for job in jobs:
        if not job.done():
            _kill_tree(int(job.job_id))
    return len(jobs)


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its child processes (found in /proc where there is one)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    for p in (*children, pid):
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


def _remove_empty(folder: Path) -> None:
    """Remove ``folder`` when it exists and is empty (submitit's local executor leaves ``logs/%j``)."""
    try:
        folder.rmdir()
    except OSError:
        return
