"""``geneman status``: a table per run folder (stage, step/total, state, elapsed, last error)."""
from __future__ import annotations

from pathlib import Path
from typing import TextIO

from pipeline.batch.status import batch_status, is_batch
from pipeline.errors import GenemanError, InputError
from pipeline.run.progress import format_eta
from pipeline.run.runner import DEFAULT_STAGES
from pipeline.run.store import RunStore, StageRecord, lock_holder

COLUMNS = ("stage", "step/total", "state", "elapsed", "last error")


def stage_rows(store: RunStore, live: bool) -> list[tuple[str, ...]]:
    """One row per stage: manifest order, then the default stages not reached yet."""
    records = dict(store.manifest.stages)
    for name in ["preprocess"] + [s.name for s in DEFAULT_STAGES]:
        records.setdefault(name, StageRecord())
    rows = []
    for name, rec in records.items():
        state = rec.state
        if state == "running" and not live:
            state = "stopped (process gone; resume it)"
        total = f"{rec.step}/{rec.total}" if rec.total else "-"
        elapsed = format_eta(rec.elapsed_s) if rec.elapsed_s else "-"
        rows.append((name, total, state, elapsed, rec.error))
    return rows


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = COLUMNS) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def run_status(root: Path) -> str:
    """The status block of one run folder."""
    store = RunStore(root)
    m = store.load()
    holder = lock_holder(root)
    status = m.status
    if status == "running" and holder is None:
        status = "stopped (process gone; `geneman resume` it)"
    head = f"{root}: {status}"
    if m.input.get("path"):
        head += f"  photo={Path(m.input['path']).name}"
    if holder:
        head += f"  (pid {holder.get('pid')} on {holder.get('host')})"
    if m.error:
        head += f"\n  error: {m.error}"
    return head + "\n" + format_table(stage_rows(store, holder is not None))


def folder_status(root: Path) -> str:
    """The status block of one run (or batch) folder.

    Raises:
        InputError: the folder is neither, or its run.json is unreadable.
    """
    if is_batch(root):
        return batch_status(Path(root), lambda r: lock_holder(r) is not None, format_table)
    if not (Path(root) / "run.json").is_file():
        raise InputError(f"{root} is not a geneman run folder (no run.json)")
    return run_status(Path(root))


def status_text(roots: list[Path]) -> str:
    """Status blocks of several run (or batch) folders; a folder that is neither is an error."""
    return "\n\n".join(folder_status(root) for root in roots)


def print_status(roots: list[Path], out: TextIO, err: TextIO) -> int:
    """Print each folder's block to ``out`` as it comes and one line to ``err`` for each that has none.

    Returns:
        0, or the exit code of the first folder that failed (2: not a run folder).
    """
    code, shown = 0, 0
    for root in roots:
        try:
            block = folder_status(root)
        except GenemanError as e:
            print(f"geneman: error: {e}", file=err)
            code = code or e.exit_code
            continue
        print(("\n" if shown else "") + block, file=out, flush=True)
        shown += 1
    return code
