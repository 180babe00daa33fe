"""One batch job: load the priors once, run its images in turn, each in its own run folder.

This is what a Slurm array task (or a local job) executes. It is a callable object that submitit
pickles; its :meth:`BatchJob.checkpoint` is submitit's requeue hook.

Preemption and time limits: Slurm sends SIGUSR2 shortly before the end (``--signal=USR2@N``).
:class:`JobSignals`, the stop flag the job hands to each image's session, records it, so the
running stage writes a checkpoint at its next step boundary and raises ``Interrupted``. The job then stops taking
images, restores submitit's handlers and re-raises SIGUSR2: submitit calls
:meth:`BatchJob.checkpoint` (the same job again), requeues it with ``scontrol requeue`` and exits.
The requeued job runs the same images; done ones are skipped and the interrupted one resumes
from its checkpoint.

SIGTERM also checkpoints and stops the job. It requeues the job the same way only when Slurm has
selected the job for preemption (``scontrol show job`` gives it a ``PreemptTime``): a preempted
job that ends by itself within the partition's GraceTime is recorded as completed and never
requeued by Slurm. Any other SIGTERM (``scancel``, the hard time limit) ends the job for good.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from submitit.helpers import DelayedSubmission

from pipeline.batch.boot import CAUGHT, PREEMPT_SIGNAL, take_early_signal
from pipeline.batch.record import LOGS
from pipeline.config import RunConfig, to_yaml
from pipeline.errors import GenemanError, Interrupted, LockError
from pipeline.logs import setup_logging
from pipeline.run import models, session
from pipeline.run.runner import DEFAULT_STAGES, StageSpec
from pipeline.run.signals import StopSignals
from pipeline.run.store import LOCK, RunStore, pid_alive

log = logging.getLogger("geneman")

SUBMIT_SCRIPT = "submitit/core/_submit.py"
"""argv[0] of a submitit job process."""


def job_ids() -> dict:
    """Slurm ids of the running job (empty outside Slurm), as they go in a run's manifest ``extra``."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return {"slurm_job_id": f"{array}_{task}" if array and task else env["SLURM_JOB_ID"],
            "slurm_array_task_id": task or "", "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", 0) or 0),
            "host": socket.gethostname()}


def preempted_by_slurm() -> bool:
    """Whether Slurm is preempting the running job and leaves its requeue to the job.

    True when ``scontrol show job`` gives the job a ``PreemptTime`` while it still runs (a grace
    time: the job may end by itself, and Slurm then records it as completed). False outside Slurm,
    when the job was not preempted, when Slurm has requeued it already (no grace time: the job is
    pending again), and (with a warning) when scontrol cannot answer.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job or shutil.which("scontrol") is None:
        return False
    try:
        r = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("batch job: cannot ask Slurm whether job %s is preempted: %s", job, e)
        return False
    fields = dict(re.findall(r"\b(JobState|PreemptTime)=(\S+)", r.stdout))
    if r.returncode != 0 or "JobState" not in fields:
        log.warning("batch job: cannot ask Slurm whether job %s is preempted: %s", job,
                    (r.stderr.strip() or "no JobState in scontrol's answer").splitlines()[0])
        return False
    if fields["JobState"] != "RUNNING":  # PENDING / REQUEUED...: Slurm requeues it (preemption without grace)
        log.info("batch job: Slurm has set job %s to %s", job, fields["JobState"])
        return False
    return fields.get("PreemptTime", "None") not in ("None", "Unknown", "N/A")


def _requeue_for(sig: "JobSignals") -> bool:
    """Whether the signal that stopped the job asks for a requeue: SIGUSR2, or SIGTERM of a preemption."""
    if sig.preempted:
        return True
    if sig.requested == signal.SIGTERM and preempted_by_slurm():
        log.warning("batch job: the SIGTERM came from a preemption; requeueing the job")
        return True
    return False


class JobSignals(StopSignals):
    """The job's stop flag, held for its whole run and handed to each image's session.

    The first of SIGUSR2 (preemption: requeue), SIGTERM, SIGINT or SIGUSR1 (stop) is recorded; the
    running stage sees it at its next step boundary, writes a checkpoint and raises ``Interrupted``.
    """

    def __init__(self):
        super().__init__(CAUGHT)

    @property
    def preempted(self) -> bool:
        """True when the first signal was the preemption signal."""
        return self.requested == PREEMPT_SIGNAL

    def _handle(self, signum, frame) -> None:
        if self.requested is None:
            log.warning("batch job: got %s; stopping after a checkpoint", signal.Signals(signum).name)
        super()._handle(signum, frame)


@dataclass
class BatchJob:
    """The callable of one batch job.

    Args:
        out: the batch folder; image ``name`` runs in ``out/name``.
        images: ``(name, photo path)`` pairs, run in this order.
        cfg: the run config of every image.
        stages: the stage specs (the product's by default; tests pass doubles).
        priors_factory: builds the priors once per job; None: the PriorSet of ``cfg``
            (:func:`pipeline.models.prepare`, weights checked before any image runs).
    """

    out: Path
    images: Sequence[tuple[str, str]]
    cfg: RunConfig
    stages: Sequence[StageSpec] = DEFAULT_STAGES
    priors_factory: Callable[[], Any] | None = None
    quiet: bool = False
    results: dict = field(default_factory=dict)

    def __call__(self) -> dict:
        """Run the images; return ``{name: state}`` (done, failed, interrupted, skipped)."""
        restore_logging = _setup_job_logging()
        try:
            return self._run()
        finally:
            restore_logging()

    def _run(self) -> dict:
        self.results = {}
        with JobSignals() as sig:
            early = take_early_signal()
            if early is not None:  # came while python was starting, before any handler of submitit's or ours
                log.warning("batch job: got %s while starting; no image started", signal.Signals(early).name)
                sig.requested = early
            loaded = None  # the priors, built before the first image (not at all when stopped before it)
            for name, photo in self.images:
                if sig.requested is not None:
                    break
                if loaded is None:
                    try:
                        loaded = self.load_models()
                    except GenemanError as e:  # missing weights, no such device: every image fails the same way
                        log.error("batch job: %s", e)
                        return self._fail_all(str(e).splitlines()[0])
                state = run_image(Path(self.out), name, Path(photo), self.cfg, self.stages, loaded, sig, self.quiet)
                self.results[name] = state
                if state == "interrupted":  # a stop signal reached the session: end the job here
                    break
        log.info("batch job: %s", ", ".join(f"{k}={v}" for k, v in self.results.items()) or "nothing run")
        unfinished = len(self.results) < len(self.images) or "interrupted" in self.results.values()
        if unfinished and os.environ.get("SUBMITIT_EXECUTOR") and _requeue_for(sig):
            signal.raise_signal(PREEMPT_SIGNAL)  # submitit's handler: checkpoint(), requeue, exit
        return self.results

    def load_models(self) -> tuple[Any, Any]:
        """``(priors, depth_normal)`` for every image of the job, built once (weights checked)."""
        priors = self.priors_factory() if self.priors_factory else models.AUTO
        return models.prepare(self.cfg, self.stages, priors, models.AUTO)

    def _fail_all(self, error: str) -> dict:
        for name, photo in self.images:
            if not is_done(Path(self.out) / name, self.cfg):
                record_outcome(Path(self.out) / name, Path(photo), error)
                self.results[name] = "failed"
        return self.results

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook: the same job again (its progress is in the run folders)."""
        return DelayedSubmission(BatchJob(self.out, self.images, self.cfg, self.stages, self.priors_factory,
                                          self.quiet))


def _setup_job_logging() -> Callable[[], None]:
    """Log lines to the job's stderr unless the caller set up logging; returns what undoes it."""
    if log.handlers:
        return lambda: None
    return setup_logging(False, False)


def is_done(folder: Path, cfg: RunConfig | None = None) -> bool:
    """True when ``folder`` holds a finished run (of config ``cfg``, when given)."""
    store = RunStore(folder)
    try:
        if not (store.exists() and store.load().status == "done"):
            return False
        return cfg is None or (folder / session.CONFIG).read_text() == to_yaml(cfg)
    except (GenemanError, OSError):
        return False


def run_image(out: Path, name: str, photo: Path, cfg: RunConfig, stages: Sequence[StageSpec],
              loaded: tuple[Any, Any], sig: JobSignals, quiet: bool = False) -> str:
    """Run (or resume) one image in ``out/name``; record a failure in its run.json instead of raising.

    ``loaded`` is the job's ``(priors, depth_normal)``, shared by its images.

    Returns:
        done, skipped (done before), failed, busy (another process holds it) or interrupted.
    """
    folder = out / name
    if is_done(folder, cfg):
        tag_run(folder, {**job_ids(), "batch_error": ""})
        return "skipped"
    _drop_placeholder(folder)
    clear_stale_job_lock(folder, out)
    log.info("batch job: %s <- %s", folder, photo)
    try:
        session.start(photo, folder, cfg, stages=stages, priors=loaded[0], depth_normal=loaded[1], quiet=quiet,
                      stop=sig, extra=job_ids())
        state, error = "done", ""
    except Interrupted as e:
        state, error = "interrupted", ""
        log.warning("%s: %s", name, e)
    except LockError as e:
        log.error("%s: %s", name, e)
        return "busy"
    except Exception as e:  # noqa: BLE001 - one image's failure must not stop the others
        state, error = "failed", str(e).splitlines()[0] if isinstance(e, GenemanError) else f"{type(e).__name__}: {e}"
        log.error("%s: failed: %s", name, error)
    record_outcome(folder, photo, error)
    return state


def clear_stale_job_lock(folder: Path, out: Path) -> None:
    """Remove a lock on ``folder`` left by an earlier job of this batch that died (SIGKILL, OOM, lost node).

    A batch submits an image only when no job that owns it is still queued or running, and Slurm
    runs one instance of a job at a time, so a lock held by a batch job of ``out`` is stale when
    this job runs the image; a lock on another host cannot be checked otherwise. Locks of any
    other process (a ``geneman resume`` by hand) are left alone.
    """
    path = folder / LOCK
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    argv = holder.get("argv") or []
    ours = len(argv) >= 2 and argv[0].endswith(SUBMIT_SCRIPT) and Path(argv[1]) == Path(out) / LOGS / "%j"
    same_host = holder.get("host") == socket.gethostname()
    if same_host and (holder.get("pid") == os.getpid() or pid_alive(holder.get("pid"))):
        return  # a live process of this host holds it: never take it away
    if ours:
        log.warning("%s: removing the lock of dead batch job pid %s on %s (since %s)", folder, holder.get("pid"),
                    holder.get("host"), holder.get("since", "?"))
        path.unlink(missing_ok=True)


def tag_run(folder: Path, fields: dict) -> None:
    """Merge ``fields`` into the manifest ``extra`` of an existing run (under its lock); no run: nothing."""
    store = RunStore(folder)
    if not store.exists() or not fields:
        return
    try:
        with store.lock():
            store.load()
            store.manifest.extra.update(fields)
            store.save()
    except GenemanError as e:
        log.warning("%s: cannot record the job id: %s", folder, e)


def record_outcome(folder: Path, photo: Path, error: str) -> None:
    """Write the job ids (and ``error``) into the run's manifest; create a failed placeholder when none exists."""
    store = RunStore(folder)
    if store.exists():
        tag_run(folder, {**job_ids(), "batch_error": error})
        return
    store.manifest.input = {"path": str(photo.resolve())}
    store.manifest.status, store.manifest.error = "failed", error
    store.manifest.extra = {**job_ids(), "batch_error": error, "placeholder": True}
    store.save()


def _drop_placeholder(folder: Path) -> None:
    """Remove a failed placeholder run.json (written when the image could not even start), so it is retried."""
    store = RunStore(folder)
    try:
        if store.exists() and store.load().extra.get("placeholder"):
            store.manifest_path.unlink(missing_ok=True)
    except GenemanError:
        return
