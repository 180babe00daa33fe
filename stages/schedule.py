"""Schedules: pure functions of the training step.

The release writes a schedule as ``[start_step, start_value, end_value, end_step]``; here it is a
typed :class:`Ramp`. A constant is a ramp whose start and end agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Ramp:
    """A value that holds ``start`` up to step ``begin``, moves linearly to ``end`` by step
    ``until`` and holds ``end`` after it (``until == begin + 1`` is a jump)."""

    start: float = 0.0
    """Value at and before step ``begin``."""
    end: float = 0.0
    """Value at and after step ``until``."""
    begin: int = 0
    """Step where the change starts."""
    until: int = 0
    """Step where the change ends; ``until <= begin`` means a jump at ``begin``."""


def const(value: float) -> Ramp:
    """A ramp that never changes."""
    return Ramp(start=value, end=value)


def ramp_field(start: float, end: float | None = None, begin: int = 0, until: int = 0):
    """Dataclass field whose default is a fresh :class:`Ramp` (a constant when ``end`` is None)."""
    end = start if end is None else end
    return field(default_factory=lambda: Ramp(start=start, end=end, begin=begin, until=until))


def ramp_value(r: Ramp, step: int) -> float:
    """Value of ``r`` at ``step``.

    Example:
        >>> round(ramp_value(Ramp(start=0.7, end=0.2, begin=0, until=200), 100), 6)
        0.45
    """
    if step <= r.begin:
        return float(r.start)
    if step >= r.until:
        return float(r.end)
    frac = (step - r.begin) / (r.until - r.begin)
    return float(r.start + (r.end - r.start) * frac)


def milestone_value(values: list, milestones: list[int], step: int):
    """Piecewise-constant schedule: ``values[i]`` from ``milestones[i-1]`` on.

    Example:
        >>> milestone_value([128, 384], [3000], 2999), milestone_value([128, 384], [3000], 3000)
        (128, 384)
    """
    if len(values) != len(milestones) + 1:
        raise ValueError(f"{len(values)} values need {len(values) - 1} milestones, got {len(milestones)}")
    idx = sum(1 for m in milestones if step >= m)
    return values[idx]
