"""``geneman status OUT`` of a batch folder: one row per image, then a summary line."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.batch.record import ACTIVE_SLURM_STATES, BATCH_FILE, load_record, local_job_state, slurm_states
from pipeline.errors import GenemanError
from pipeline.report.index import write_batch_index
from pipeline.run.store import RunStore

log = logging.getLogger("geneman")

COLUMNS = ("image", "stage", "step/total", "state", "job", "error")
SUMMARY_ORDER = ("done", "running", "queued", "failed", "interrupted", "blocked", "stopped")


def is_batch(root: Path) -> bool:
    """True when ``root`` is a batch folder (it holds ``batch.json``)."""
    return (Path(root) / BATCH_FILE).is_file()


def current_stage(store: RunStore) -> tuple[str, str]:
    """``(stage, step/total)`` of the first stage not done (the last stage when all are done)."""
    stages = store.manifest.stages
    if not stages:
        return "-", "-"
    name, rec = next(((n, r) for n, r in stages.items() if r.state != "done"), list(stages.items())[-1])
    return name, f"{rec.step}/{rec.total}" if rec.total else "-"


def image_state(store: RunStore | None, slurm_state: str | None, live) -> str:
    """One word for an image: done, running, queued, failed, interrupted, blocked or stopped.

    Args:
        store: its run folder (loaded), or None when it has not started.
        slurm_state: squeue's state of its job (GONE: squeue no longer lists it; for a local job
            RUNNING or GONE from its recorded pid), or None when that cannot be told (no Slurm here).
        live: ``live(root) -> bool``, whether a process holds the run folder's lock.
    """
    active = slurm_state in ACTIVE_SLURM_STATES
    if store is None:
        return "queued" if active or slurm_state is None else "stopped"
    status = store.manifest.status
    if status == "done":
        return "done"
    if status in ("failed", "blocked"):
        return status
    if status == "running" and slurm_state != "GONE" and live(store.root):
        return "running"
    if active:
        return "queued"  # its job is pending, requeued, or running other images first
    return "interrupted" if status == "interrupted" else "stopped"


def batch_rows(root: Path, live) -> list[tuple[str, ...]]:
    """One row per image of the batch in ``root``."""
    record = load_record(root)
    images = record.get("images", {})
    states = slurm_states([i.get("job_id", "") for i in images.values() if i.get("executor") == "slurm"])
    rows = []
    for name, info in images.items():
        store = RunStore(root / name)
        try:
            loaded = store if store.exists() and store.load() is not None else None
        except GenemanError:
            loaded = None
        job = info.get("job_id", "")
        if info.get("executor") == "local":
            slurm_state = local_job_state(info)  # RUNNING / GONE as squeue would say, from the recorded pid
        else:
            slurm_state = None if states is None or info.get("executor") != "slurm" else states.get(job, "GONE")
        state = image_state(loaded, slurm_state, live)
        stage, steps = current_stage(loaded) if loaded else ("-", "-")
        error = (loaded.manifest.error or loaded.manifest.extra.get("batch_error", "")) if loaded else ""
        rows.append((name, stage, steps, state, job or "-", error if state in ("failed", "blocked") else ""))
    return rows


def refresh_index(root: Path, live, rows: list[tuple[str, ...]] | None = None) -> None:
    """Rewrite ``index.html`` (from ``rows``, else the batch's rows now); where it cannot be written, one warning
    line (the batch's own files are what count)."""
    try:
        rows = batch_rows(Path(root), live) if rows is None else rows
        write_batch_index(Path(root), rows, summary(rows))
    except (OSError, GenemanError) as e:
        log.warning("batch: %s could not be written (%s)", Path(root) / "index.html", e)


def summary(rows: list[tuple[str, ...]]) -> str:
    """``N images: a done, b running, c queued, d failed`` (other states only when present)."""
    counts = {s: 0 for s in SUMMARY_ORDER}
    for row in rows:
        counts[row[3]] = counts.get(row[3], 0) + 1
    parts = [f"{counts[s]} {s}" for s in SUMMARY_ORDER if s in ("done", "running", "queued", "failed") or counts[s]]
    return f"{len(rows)} images: " + ", ".join(parts)


def write_index(root: Path, live) -> Path:
    """Write the batch's ``index.html`` (``pipeline.report.index``) from its rows as ``geneman status`` sees them
    (``live(run folder)``: whether a process holds its lock)."""
    rows = batch_rows(Path(root), live)
    return write_batch_index(Path(root), rows, summary(rows))


def batch_status(root: Path, live, format_table) -> str:
    """The status block of a batch folder: header, table, summary line; ``index.html`` refreshed."""
    rows = batch_rows(Path(root), live)
    refresh_index(Path(root), live, rows)
    table = format_table(rows, COLUMNS) if rows else "(no images)"
    return f"{root}: batch\n{table}\n{summary(rows)}"
