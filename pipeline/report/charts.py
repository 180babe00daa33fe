"""Line charts as inline SVG: the report's loss curves and per-view figures, drawn without a script.

>>> svg = line_chart({"rgb": ([1, 2, 3], [1.0, 0.5, 0.25])}, log_y=True, title="losses")
>>> svg.startswith("<svg") and "rgb" in svg and "polyline" in svg
True
"""
from __future__ import annotations

import html
import math
from typing import Mapping, Sequence

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _number(v) -> float:
    """``v`` as a float; NaN for anything that is not a number (a window where the loss was not computed)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _finite(xs: Sequence[float], ys: Sequence[float], log_y: bool) -> list[tuple[float, float]]:
    pairs = [(_number(x), _number(y)) for x, y in zip(xs, ys)]
    return [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y) and (not log_y or y > 0)]


def wants_log(series: Series) -> bool:
    """Log scale where the values are positive and span more than a factor of 20."""
    ys = [y for _, values in series.values() for y in map(_number, values) if math.isfinite(y)]
    return bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 20


def line_chart(series: Series, log_y: bool | None = None, title: str = "", x_label: str = "step",
               width: int = 640, height: int = 240) -> str:
    """An SVG chart of named ``(x, y)`` series, with axes, tick labels and a legend (``log_y`` None: chosen
    by :func:`wants_log`). Non-finite points (and, on a log axis, points <= 0) are left out."""
    log_y = wants_log(series) if log_y is None else log_y
    pts = {name: _finite(xs, ys, log_y) for name, (xs, ys) in series.items()}
    pts = {k: v for k, v in pts.items() if v}
    left, right, top, bottom = 56, 130, 22, 34  # the legend goes in the right margin
    w, h = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img"><title>{html.escape(title)}</title>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fff" stroke="#999"/>',
           f'<text x="{left}" y="14" font-size="12">{html.escape(title)}'
           f'{" (log scale)" if log_y else ""}</text>']
    if not pts:
        out.append(f'<text x="{left + 8}" y="{top + 20}" font-size="12">nothing recorded yet</text></svg>')
        return "".join(out)
    fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    xs = [x for v in pts.values() for x, _ in v]
    ys = [fy(y) for v in pts.values() for _, y in v]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    sx = lambda x: left + (x - x0) / (x1 - x0) * w  # noqa: E731
    sy = lambda y: top + h - (fy(y) - y0) / (y1 - y0) * h  # noqa: E731
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        label = f"{10 ** v:.3g}" if log_y else f"{v:.3g}"
        y = top + h - h * i / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
    for i in range(5):
        v = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{sx(v):.1f}" y="{top + h + 14}" font-size="10" text-anchor="middle">{v:.4g}</text>')
    out.append(f'<text x="{left + w / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
               f'{html.escape(x_label)}</text>')
    for i, (name, v) in enumerate(pts.items()):
        colour = COLOURS[i % len(COLOURS)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in v)
        out.append(f'<polyline class="series" data-name="{html.escape(name)}" fill="none" stroke="{colour}" '
                   f'stroke-width="1.5" points="{line}"/>')
        if len(v) == 1:
            out.append(f'<circle cx="{sx(v[0][0]):.1f}" cy="{sy(v[0][1]):.1f}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{left + w + 8}" y="{top + 10 + 13 * i}" font-size="11" fill="{colour}">'
                   f'{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)
