"""Progress of a stage: a bar (step/total, ETA, losses) on a terminal, plain log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time
from typing import Mapping

from tqdm import tqdm

log = logging.getLogger("geneman")


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` for a number of seconds (``?`` when unknown)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_losses(losses: Mapping[str, float], limit: int = 4) -> str:
    """The total and the largest terms, as ``name=value`` pairs."""
    items = sorted(losses.items(), key=lambda kv: -abs(kv[1]))
    total = sum(losses.values())
    return " ".join([f"loss={total:.4g}"] + [f"{k}={v:.3g}" for k, v in items[:limit]])


class Progress:
    """Report a stage's steps.

    Args:
        name: stage name shown in every line.
        total: number of steps.
        every_s: seconds between plain lines (non-terminal output).
        quiet: report nothing.
        tty: draw a bar; default: whether stderr is a terminal.
    """

    def __init__(self, name: str, total: int, every_s: float = 10.0, quiet: bool = False, tty: bool | None = None):
        self.name, self.total, self.every_s, self.quiet = name, total, every_s, quiet
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._bar = None
        self._t0 = self._last = time.monotonic()
        self._first = 0

    def start(self, step: int) -> None:
        """Begin at ``step`` (non-zero after a resume)."""
        self._first, self._t0 = step, time.monotonic()
        self._last = self._t0
        if self.quiet:
            return
        if self.tty:
            self._bar = tqdm(total=self.total, initial=step, desc=self.name, unit="step", dynamic_ncols=True)
        else:
            log.info("%s: start at step %d/%d", self.name, step, self.total)

    def eta(self, step: int) -> float:
        """Seconds left at the pace since :meth:`start`."""
        done = step - self._first
        if done <= 0:
            return float("nan")
        return (time.monotonic() - self._t0) / done * (self.total - step)

    def update(self, step: int, losses: Mapping[str, float]) -> None:
        """Report that ``step`` steps are complete with these losses."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(format_losses(losses), refresh=False)
            self._bar.refresh()
            return
        t = time.monotonic()
        if t - self._last >= self.every_s or step == self.total:
            self._last = t
            log.info("%s step %d/%d (%.1f%%) eta %s %s", self.name, step, self.total, 100.0 * step / self.total,
                     format_eta(self.eta(step)), format_losses(losses))

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
