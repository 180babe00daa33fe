"""Step checkpoints of a stage: atomic, verified, complete (every RNG state), safe to load.

A stage's loop hands its stateful objects (modules, optimisers, schedulers, generators) to
:meth:`Checkpointer.resume` once and calls :meth:`Checkpointer.step_done` after every step.
Beside ``ckpt/``, ``losses.json`` records each loss's mean over windows of steps (the report's loss
curves), written with each checkpoint and cut back to the checkpoint a resume starts from.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from pipeline.errors import Interrupted
from pipeline.run.progress import Loss, Progress, loss_numbers
from pipeline.run.signals import StopSignals
from pipeline.run.store import atomic_write_bytes

log = logging.getLogger("geneman")

FORMAT = 1
_NAME = re.compile(r"^step_(\d{8})\.pt$")
LOSSES = "losses.json"
"""The loss record beside a stage's ``ckpt/`` folder: ``{"steps": [...], "losses": {name: [...]}}``."""
WINDOWS_PER_CHECKPOINT = 5
"""Loss means recorded per checkpoint interval; they stay on the device until the checkpoint is written (which
waits for the device anyway), then become numbers all at once."""


def rng_state() -> dict:
    """Every global RNG state: python, numpy, torch CPU and CUDA."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _get(obj: Any):
    return obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()


def _set(obj: Any, value) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(value)
    else:
        obj.load_state_dict(value)


def save_checkpoint(path: Path, step: int, objects: dict[str, Any]) -> None:
    """Write ``objects``' states, ``step`` and the RNG states to ``path``, then its sha256 beside it."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "step": step, "objects": {k: _get(v) for k, v in objects.items()},
                "rng": rng_state()}, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())


def load_checkpoint(path: Path) -> dict:
    """Read and verify a checkpoint (``weights_only``: no arbitrary unpickling).

    Raises:
        ValueError: the file or its digest is missing, damaged or does not match.
    """
    digest_path = path.with_name(path.name + ".sha256")
    if not digest_path.is_file():
        raise ValueError("no digest file (write did not finish)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest_path.read_text().strip():
        raise ValueError("sha256 does not match its digest")
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"cannot be read: {one_line(e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError("not a geneman checkpoint")
    return ckpt


def one_line(e: BaseException, limit: int = 160) -> str:
    """The gist of an error on one line: torch's ``weights_only`` refusal spans a dozen lines and colours,
    and its one useful line is the unpickler's (``Unsupported global: ...``)."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    gist = next((ln for ln in lines if "Unpickler error" in ln), lines[0] if lines else type(e).__name__)
    return gist if len(gist) <= limit else gist[:limit - 3] + "..."


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoint files in ``folder``, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


class Checkpointer:
    """The stage's handle on checkpoints, stop signals and progress.

    Args:
        folder: where ``step_XXXXXXXX.pt`` files go.
        total: the stage's number of steps.
        every: save every this many steps.
        keep: keep this many newest checkpoints.
        progress: progress reporter of the stage.
        stop: the process's stop-signal flag.
        on_step: called with the step count after each step (the runner throttles manifest writes).
    """

    def __init__(self, folder: Path, total: int, every: int, keep: int, progress: Progress,
                 stop: StopSignals, on_step: Callable[[int, bool], None] = lambda step, saved: None):
        self.folder, self.total, self.every, self.keep = Path(folder), total, every, keep
        self.progress, self.stop, self.on_step = progress, stop, on_step
        self.window = max(1, every // WINDOWS_PER_CHECKPOINT)
        self.record: dict[str, Any] = {"steps": [], "losses": {}}
        self._sums: dict[str, list] = {}
        self._pending: list[tuple[int, dict[str, Loss]]] = []

    def resume(self, objects: dict[str, Any]) -> int:
        """Load the newest valid checkpoint into ``objects`` and the RNGs; return the next step (0 if none).

        A damaged newest checkpoint is skipped with a warning and the one before it used. Temp
        files of a write that was killed half-way are removed.
        """
        for tmp in self.folder.glob(".step_*.tmp") if self.folder.is_dir() else ():
            tmp.unlink(missing_ok=True)
        found = list_checkpoints(self.folder)
        for i, (step, path) in enumerate(found):
            try:
                ckpt = load_checkpoint(path)
                missing = set(objects) - set(ckpt["objects"])
                if missing:
                    raise ValueError(f"lacks {sorted(missing)}")
            except (ValueError, OSError) as e:
                then = (f"using the previous checkpoint, {found[i + 1][1].name}" if i + 1 < len(found)
                        else "no earlier checkpoint: the stage starts again from step 0")
                log.warning("checkpoint %s is damaged (%s); %s", path, one_line(e), then)
                continue
            self._set_aside_newer_than(step)
            for name, obj in objects.items():
                _set(obj, ckpt["objects"][name])
            set_rng_state(ckpt["rng"])
            log.info("resumed from %s (step %d/%d)", path, step, self.total)
            self.progress.start(step)
            self._load_record(int(ckpt["step"]))
            return int(ckpt["step"])
        self.progress.start(0)
        return 0

    @property
    def record_path(self) -> Path:
        return self.folder.parent / LOSSES

    def _load_record(self, step: int) -> None:
        """The loss record up to ``step`` (a resume's start); an unreadable one starts again empty."""
        try:
            rec = json.loads(self.record_path.read_text())
            keep = sum(1 for s in rec["steps"] if s <= step)
            self.record = {"steps": rec["steps"][:keep], "losses": {k: v[:keep] for k, v in rec["losses"].items()}}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.record = {"steps": [], "losses": {}}

    def _add_losses(self, step: int, losses: Mapping[str, Loss], saving: bool) -> None:
        """Sum the step's losses (tensors stay on their device, nothing is read); a window's end keeps each
        loss's mean over the steps that computed it, still a tensor; a checkpoint turns the kept means into
        numbers (one read for all) and appends them to the record."""
        for k, v in losses.items():
            total = self._sums.setdefault(k, [0.0, 0])
            total[0] = total[0] + (v.detach().float() if isinstance(v, torch.Tensor) else float(v))
            total[1] += 1
        if (saving or step % self.window == 0) and self._sums:
            self._pending.append((step, {k: s / n for k, (s, n) in self._sums.items()}))
            self._sums = {}
        if not saving or not self._pending:
            return
        flat = {f"{i}/{k}": v for i, (_, means) in enumerate(self._pending) for k, v in means.items()}
        numbers = loss_numbers(flat)
        for i, (at, means) in enumerate(self._pending):
            n = len(self.record["steps"])
            for k in means:
                self.record["losses"].setdefault(k, [None] * n).append(numbers[f"{i}/{k}"])
            for values in self.record["losses"].values():
                if len(values) == n:
                    values.append(None)
            self.record["steps"].append(at)
        self._pending = []

    def _set_aside_newer_than(self, step: int) -> None:
        """Rename damaged checkpoints newer than the one resumed from to ``*.bad``, so that pruning
        (which keeps the newest files) can never keep them in place of good ones."""
        for newer, path in list_checkpoints(self.folder):
            if newer > step:
                path.rename(path.with_name(path.name + ".bad"))
                path.with_name(path.name + ".sha256").unlink(missing_ok=True)

    def step_done(self, step: int, losses: Mapping[str, Loss], objects: dict[str, Any]) -> None:
        """Call after each optimisation step with the number of steps completed.

        Reports progress; saves every ``every`` steps and when a stop signal has arrived, and in
        the latter case raises :class:`Interrupted` once the checkpoint is on disk.

        Args:
            step: steps completed.
            losses: the step's losses as the loop has them, scalar tensors (no ``.item()``) or
                floats; they become numbers only on the steps that print them
                (:meth:`pipeline.run.progress.Progress.update`), so a GPU loop does not wait
                on the device once per loss per step.
            objects: the stateful objects handed to :meth:`resume`.
        """
        self.progress.update(step, losses)
        stopping = self.stop.requested is not None
        saved = stopping or step % self.every == 0 or step == self.total
        self._add_losses(step, losses, saved)
        if saved:
            self.save(step, objects)
            atomic_write_bytes(self.record_path, json.dumps(self.record).encode())
        self.on_step(step, saved)
        if stopping and step < self.total:
            raise Interrupted(f"stopped by {self.stop.name} at step {step}/{self.total}; checkpoint written, "
                              "continue with `geneman resume`")

    def check_stop(self) -> None:
        """Raise :class:`Interrupted` when a stop signal has arrived, saving nothing: called by work before
        a stage's first step (stage 2's SDF fit), which a resume does again from its start."""
        if self.stop.requested is not None:
            raise Interrupted(f"stopped by {self.stop.name} before step 1/{self.total} (nothing to keep yet); "
                              "continue with `geneman resume`")

    def save(self, step: int, objects: dict[str, Any]) -> Path:
        """Write a checkpoint for ``step`` now and prune old ones."""
        path = self.folder / f"step_{step:08d}.pt"
        save_checkpoint(path, step, objects)
        for _, old in list_checkpoints(self.folder)[self.keep:]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        return path
