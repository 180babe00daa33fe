"""How fast a report page opens from disk, and what it weighs, in a real headless Chromium.

Run:  .venv/bin/python benchmarks/bench_report.py OUT [--runs 5]

OUT is a run (or bench) folder with its report.html (``geneman report OUT`` writes it). Each run opens the
page in a fresh tab and times, from the navigation: the page's load event (the document, its images and
scripts: ``<model-viewer>`` and ``models.js``), and the first viewer's ``load`` event (the avatar decoded and
drawn). Prints the median and the slowest, and the page's weight beside the avatar's data (``models.js``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.report.page import FILES, page_weight  # noqa: E402
from tests.browser import CHROMIUM, Browser  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if CHROMIUM is None:
        sys.exit("no headless Chromium (apt-get install chromium-headless-shell)")
    page = args.out / "report.html"
    loads, viewers = [], []
    with Browser(CHROMIUM) as browser:
        for _ in range(args.runs):
            t0 = time.monotonic()
            loads.append(browser.open(page))
            browser.wait_for("Array.from(document.querySelectorAll('model-viewer')).every(v => v.loaded)", 120)
            viewers.append(time.monotonic() - t0)
    weight = page_weight(args.out)
    data = (args.out / FILES / "models.js").stat().st_size
    print(f"{page}: {args.runs} opens")
    print(f"load event: median {statistics.median(loads):.2f} s, slowest {max(loads):.2f} s")
    print(f"viewer drawn: median {statistics.median(viewers):.2f} s, slowest {max(viewers):.2f} s")
    print(f"page + scripts + images: {weight / 2**20:.2f} MB; the avatar's data (models.js): {data / 2**20:.2f} MB")


if __name__ == "__main__":
    main()
