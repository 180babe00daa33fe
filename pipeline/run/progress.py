"""Progress of a stage: a bar (step/total, ETA, losses) on a terminal, plain log lines otherwise.

Losses come in as the loop has them, tensors or floats. Tensors become numbers only on the steps
whose line (or bar text) shows them, all at once (one device sync), never once per loss per step.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Mapping

import torch
from tqdm import tqdm

log = logging.getLogger("geneman")

Loss = torch.Tensor | float
"""A loss as a stage hands it over: a scalar tensor (on any device) or a number."""
BAR_LOSSES_EVERY_S = 1.0
"""Seconds between refreshes of the losses shown on a terminal's bar (the bar's count moves every step)."""


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` for a number of seconds (``?`` when unknown)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def loss_numbers(losses: Mapping[str, Loss]) -> dict[str, float]:
    """The losses as Python floats, in their order; the tensors among them cost one device sync in all.

    >>> loss_numbers({"rgb": torch.tensor(0.25), "mask": 2})
    {'rgb': 0.25, 'mask': 2.0}
    """
    tensors = {k: v for k, v in losses.items() if isinstance(v, torch.Tensor)}
    values = {}
    if tensors:
        device = next(iter(tensors.values())).device
        stacked = torch.stack([v.detach().reshape(()).to(device, torch.float32) for v in tensors.values()])
        values = dict(zip(tensors, stacked.tolist()))
    return {k: values[k] if k in values else float(v) for k, v in losses.items()}


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
        unit: what is counted (``step``; ``geneman eval`` counts ``view``).
    """

    def __init__(self, name: str, total: int, every_s: float = 10.0, quiet: bool = False, tty: bool | None = None,
                 unit: str = "step"):
        self.name, self.total, self.every_s, self.quiet, self.unit = name, total, every_s, quiet, unit
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
            self._bar = tqdm(total=self.total, initial=step, desc=self.name, unit=self.unit, dynamic_ncols=True)
        else:
            log.info("%s: start at %s %d/%d", self.name, self.unit, step, self.total)

    def eta(self, step: int) -> float:
        """Seconds left at the pace since :meth:`start`."""
        done = step - self._first
        if done <= 0:
            return float("nan")
        return (time.monotonic() - self._t0) / done * (self.total - step)

    def update(self, step: int, losses: Mapping[str, Loss]) -> None:
        """Report that ``step`` steps are complete with these losses.

        Loss tensors are read (turned into numbers) only when this step shows them: a plain line
        every ``every_s`` seconds, the bar's text every :data:`BAR_LOSSES_EVERY_S`, and the last
        step always; on other steps they are not touched. Plain numbers reach the bar every step.
        No losses (``{}``): the count alone.
        """
        if self.quiet:
            return
        t = time.monotonic()
        due = step == self.total or t - self._last >= (BAR_LOSSES_EVERY_S if self._bar is not None else self.every_s)
        if due:
            self._last = t
        if self._bar is not None:
            self._bar.n = step
            if losses and (due or not any(isinstance(v, torch.Tensor) for v in losses.values())):  # numbers: free
                self._bar.set_postfix_str(format_losses(loss_numbers(losses)), refresh=False)
            self._bar.refresh()
        elif due:
            text = f" {format_losses(loss_numbers(losses))}" if losses else ""
            log.info("%s %s %d/%d (%.1f%%) eta %s%s", self.name, self.unit, step, self.total, 100.0 * step / self.total,
                     format_eta(self.eta(step)), text)

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
