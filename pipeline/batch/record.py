"""The record of a batch folder (``OUT/batch.json``) and what Slurm says of its jobs.

Shared by submission (:mod:`pipeline.batch.submit`), the jobs (:mod:`pipeline.batch.job`) and the
status table (:mod:`pipeline.batch.status`); of the package it imports only the leaves
:mod:`pipeline.errors` and :mod:`pipeline.run.store`.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Sequence

from pipeline.errors import InputError
from pipeline.run.store import atomic_write_bytes, now, pid_alive

BATCH_FILE = "batch.json"
"""The batch's record: inputs, settings, every submission with its job ids."""
LOGS = "logs"
"""Where a batch's submitit files go (``OUT/logs/%j``); the job's argv names it."""
ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                       "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}
"""squeue states of a job that will still run (or runs) its images."""


def load_record(out: Path) -> dict:
    """The content of ``out/batch.json`` (an empty record when there is none)."""
    path = Path(out) / BATCH_FILE
    if not path.is_file():
        return {"version": 1, "created": now(), "images": {}, "submissions": []}
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path} is unreadable ({e}); the batch folder is damaged") from None
    if not (isinstance(record, dict) and isinstance(record.get("images", {}), dict)
            and isinstance(record.get("submissions", []), list)
            and all(isinstance(v, dict) for v in record.get("images", {}).values())):
        raise InputError(f"{path} is not a batch record (wrong JSON types); the batch folder is damaged")
    record.setdefault("images", {})
    record.setdefault("submissions", [])
    return record


def save_record(out: Path, record: dict) -> None:
    """Write ``out/batch.json`` atomically."""
    record["updated"] = now()
    atomic_write_bytes(Path(out) / BATCH_FILE, (json.dumps(record, indent=2) + "\n").encode())


def slurm_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """``{job id: state}`` from squeue for the jobs Slurm still lists; None when squeue cannot tell."""
    ids = sorted({j for j in job_ids if j})
    if not ids or shutil.which("squeue") is None:
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(ids)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0 and "Invalid job id" not in r.stderr:
        return None
    states = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def process_tag(pid: int) -> dict:
    """What identifies process ``pid`` of this host later: pid, host and (where /proc has it) its start time."""
    return {"pid": pid, "host": socket.gethostname(), "pid_started": _start_time(pid)}


def _start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks); None without /proc or for a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def local_job_state(info: dict) -> str | None:
    """``RUNNING`` while the process recorded for a local job's image lives, else ``GONE``.

    The process is the image's local job (its submitit controller) once it has one, before that the
    ``geneman batch`` that is to start it. A pid that now names another process (a start time that
    differs) or a zombie counts as gone. None when it cannot be told: no pid recorded (an older
    batch.json) or one of another host.
    """
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return None
    if not pid_alive(pid):
        return "GONE"
    started = info.get("pid_started")
    now_started = _start_time(pid)
    if now_started is None and Path("/proc/self/stat").exists():
        return "GONE"  # /proc works here, so the process is a zombie
    return "RUNNING" if started is None or now_started == started else "GONE"
