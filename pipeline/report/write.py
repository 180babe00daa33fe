"""``geneman report OUT``: the page of a run folder, a bench folder or a batch folder, as a run writes it."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import InputError
from pipeline.report.page import is_bench, write_run_report
from pipeline.run.store import lock_holder

log = logging.getLogger("geneman")


def write_report(folder: Path) -> list[Path]:
    """Write the page(s) of ``folder``: a batch folder's index.html and each of its runs' report.html, a
    bench folder's report.html (and its run's), or a run folder's report.html. Returns the pages written.

    Raises:
        InputError: ``folder`` is none of these.
    """
    folder = Path(folder)
    from pipeline.batch.status import is_batch, write_index

    if is_batch(folder):
        pages = [write_run_report(run.parent) for run in sorted(folder.glob("*/run.json"))]
        return pages + [write_index(folder, lambda r: lock_holder(r) is not None)]
    if is_bench(folder):
        return [write_run_report(folder / "run"), write_run_report(folder / "run", bench_root=folder)]
    if (folder / "run.json").is_file():
        try:
            return [write_run_report(folder)]
        except ValueError as e:
            raise InputError(str(e)) from None
    raise InputError(f"{folder} is not a run, bench or batch folder (no run.json, bench.json or batch.json); "
                     "give the -o folder of `geneman run`, `bench` or `batch`")


def refresh(folder: Path, bench_root: Path | None = None) -> None:
    """Rewrite a run's page (with ``bench_root``: the bench folder's) after a stage or at the end, never
    failing the run: a page that cannot be written is one warning line (the run's own files are what count)."""
    page = Path(bench_root or folder) / "report.html"
    try:
        write_run_report(folder, bench_root)
    except Exception as e:  # noqa: BLE001 - the report must never fail the run it reports on
        log.warning("report: %s could not be written (%s: %s); `geneman report %s` tries again",
                    page, type(e).__name__, " ".join(str(e).split()), page.parent)
