"""A batch folder's ``OUT/index.html``: one row per photo (the photo, the avatar's preview, state, time, a link
to its run's report), from the rows of ``geneman status`` and each run folder's own files."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.report.page import esc, html_page, read_json, rel, stage_seconds
from pipeline.run.store import atomic_write_bytes

INDEX = "index.html"


def thumbnail(root: Path, path: Path | None, alt: str) -> str:
    if path is None or not path.is_file():
        return "-"
    return f'<img class="thumb" src="{esc(rel(root, path))}" alt="{esc(alt)}" height="96">'


def write_batch_index(root: Path, rows: Sequence[tuple[str, ...]], summary: str) -> Path:
    """Write ``root/index.html`` for the batch rows (``image, stage, step/total, state, job, error``)."""
    root = Path(root)
    lines = []
    for name, stage, steps, state, job, error in rows:
        run = root / name
        manifest = read_json(run / "run.json") or {}
        photo = manifest.get("input", {}).get("stored_photo") if isinstance(manifest, dict) else None
        seconds = stage_seconds(manifest)
        report = run / "report.html"
        link = f'<a href="{esc(rel(root, report))}">report</a>' if report.is_file() else "-"
        lines.append(
            f'<tr class="image" data-image="{esc(name)}" data-state="{esc(state)}"><td>{esc(name)}</td>'
            f'<td>{thumbnail(root, run / "00_preprocess" / photo if photo else None, "photo")}</td>'
            f'<td>{thumbnail(root, run / "final" / "preview.png", "avatar")}</td>'
            f'<td class="state-{esc(state)}">{esc(state)}</td><td>{esc(stage)} {esc(steps)}</td>'
            f"<td>{seconds:.0f} s</td><td>{link}</td><td class=\"error\">{esc(error)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("image", "photo", "avatar", "state", "stage", "time", "report", "error"))
    page = html_page(f"geneman batch: {root.name}",
                     f"<h1>geneman batch: {esc(root.name)}</h1><p id=\"summary\">{esc(summary)}</p>"
                     f'<table id="images"><tr>{head}</tr>{"".join(lines)}</table>')
    path = root / INDEX
    atomic_write_bytes(path, page.encode())
    return path
