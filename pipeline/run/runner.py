"""Run the stages in order through the stage interface, skipping what is done, resuming what was cut.

Each stage module exposes ``Config``, ``FOLDER``, ``run(cfg, inputs, previous, priors, ckpt) ->
Result`` and ``Result`` with ``save(folder)`` / ``load(folder)``. The runner hands one stage's
Result to the next; nothing here knows what a stage does.
"""
from __future__ import annotations

import difflib
import logging
import os
import random
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline.config import RunConfig, digest, to_dict
from pipeline.errors import (
    ConfigError,
    DamagedResult,
    GenemanError,
    InputError,
    Interrupted,
    StageFailed,
    StageNotBuilt,
)
from pipeline.report import write as report
from pipeline.run import preprocess
from pipeline.run.checkpoint import Checkpointer
from pipeline.run.progress import Progress
from pipeline.run.signals import StopSignals
from pipeline.run.store import (
    PREPROCESS,
    RunStore,
    atomic_write_bytes,
    fsync_dir,
    now,
    set_aside_error_log,
    sha256_file,
    verify_result,
    write_result_digest,
)
from stages import geometry_init, geometry_sculpt, texture_coarse, texture_refine
from stages.inputs import Inputs
from stages.loop import deterministic, stage_device

log = logging.getLogger("geneman")

#: Fields of ``cfg.priors`` that change memory or location but not results, or that no stage reads
#: (``clip_eval``: ``geneman eval`` only): not hashed.
UNHASHED_PRIOR_FIELDS = ("weights_dir", "attention_slicing", "cpu_offload", "trust_weights", "trust_prior_3d_pickle",
                         "clip_eval")
DEFAULT_PROMPT = "a photo of a person"
FINAL = "final"


@dataclass(frozen=True)
class StageSpec:
    """One stage as the runner sees it: its config key, its folder and its module."""

    name: str
    folder: str
    module: Any


DEFAULT_STAGES: tuple[StageSpec, ...] = tuple(
    StageSpec(m.__name__.rsplit(".", 1)[-1], m.FOLDER, m)
    for m in (geometry_init, geometry_sculpt, texture_coarse, texture_refine))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stage_names(stages: Sequence[StageSpec]) -> list[str]:
    """Names accepted by ``--from-stage``."""
    return ["preprocess"] + [s.name for s in stages]


def check_stage_name(name: str, stages: Sequence[StageSpec]) -> None:
    """Raise ConfigError naming the nearest stage when ``name`` is not one."""
    names = stage_names(stages)
    if name not in names:
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise ConfigError(f"unknown stage '{name}'; {hint}stages: {', '.join(names)}")


class Runner:
    """Drive one run folder from preprocess to the last stage.

    Args:
        store: the run folder, its manifest loaded or created.
        cfg: the resolved run config.
        stages: the stage specs, in order.
        priors: whatever the stages take as priors (loaded once by the caller).
        depth_normal: depth/normal estimator for preprocess, or None.
        quiet: no progress output.
        stop: stop-signal flag (installed by the caller).
    """

    def __init__(self, store: RunStore, cfg: RunConfig, stages: Sequence[StageSpec] = DEFAULT_STAGES,
                 priors: Any = None, depth_normal: Callable | None = None, quiet: bool = False,
                 stop: StopSignals | None = None):
        self.store, self.cfg, self.stages, self.priors = store, cfg, tuple(stages), priors
        self.depth_normal, self.quiet = depth_normal, quiet
        self.stop = stop or StopSignals(())
        self._last_write = 0.0
        self._digests: dict[str, str] = {}  # each result's DIGEST.json digest, by stage name, as this run has them

    def run(self, from_stage: str | None = None, until: str | None = None) -> Any:
        """Run every stage not yet done; return the last stage's Result.

        ``until``: stop after that stage (run.json status ``paused``; ``geneman resume`` goes on) and
        return its Result (preprocess: the ``Inputs``). ``report.html`` is written after every stage and
        when the run ends, however it ends.
        """
        try:
            return self._run(from_stage, until)
        finally:
            report.refresh(self.store.root)

    def _run(self, from_stage: str | None, until: str | None) -> Any:
        if from_stage:
            check_stage_name(from_stage, self.stages)
            self._invalidate_from(stage_names(self.stages).index(from_stage))
        if until:
            check_stage_name(until, self.stages)
        self._set_status("running")
        inputs, h = self._preprocess()
        if until == "preprocess":
            return self._pause(until, inputs)
        previous = None
        for index, spec in enumerate(self.stages, start=1):
            if self.stop.requested:
                msg = f"stopped by {self.stop.name} before {spec.name}; continue with `geneman resume`"
                self._set_status("interrupted", msg)
                raise Interrupted(msg)
            h = digest(spec.name, h, self.cfg.seed, to_dict(getattr(self.cfg, spec.name)), self._prior_key())
            previous = self._stage(spec, index, inputs, previous, h)
            report.refresh(self.store.root)
            if spec.name == until:
                return self._pause(until, previous)
        self._export(previous)
        self._set_status("done")
        return previous

    def _pause(self, stage: str, result: Any) -> Any:
        """Stop after ``stage`` as ``--until`` asked: status ``paused``, resumable."""
        self.store.manifest.extra["until"] = stage
        self._set_status("paused", "")
        log.info("stopped after %s (--until); `geneman resume %s` continues", stage, self.store.root)
        return result

    def _export(self, result: Any) -> None:
        """Write the last Result to ``final/``; the run is done only when this worked."""
        try:
            for path in result.export(self.store.folder(FINAL), list(self.cfg.export.formats), self.cfg.export):
                log.info("wrote %s", path)
        except Exception as e:  # noqa: BLE001 - recorded, then reported as one line
            error = f"export: {type(e).__name__}: {e}".splitlines()[0]
            self._set_status("failed", error)
            raise StageFailed(f"{error} (fix and `geneman resume {self.store.root}`, which exports again)") from e

    def _prior_key(self) -> dict:
        d = to_dict(self.cfg.priors)
        return {k: v for k, v in d.items() if k not in UNHASHED_PRIOR_FIELDS}

    def _set_status(self, status: str, error: str = "") -> None:
        self.store.manifest.status, self.store.manifest.error = status, error
        self.store.save()

    def _invalidate_from(self, index: int) -> None:
        """Clear stage ``index`` (0 = preprocess) and every later one."""
        specs = [(("preprocess"), PREPROCESS)] + [(s.name, s.folder) for s in self.stages]
        for name, folder in specs[index:]:
            rec = self.store.manifest.stages.get(name)
            if rec is not None and rec.hash:
                rec.hash, rec.state = "", "invalidated"
            shutil.rmtree(self.store.folder(folder) / "result", ignore_errors=True)
            shutil.rmtree(self.store.folder(folder) / "ckpt", ignore_errors=True)
        self.store.save()

    def _preprocess(self) -> tuple[Inputs, str]:
        m = self.store.manifest
        prompts = (self.cfg.prompt or DEFAULT_PROMPT, self.cfg.negative_prompt)
        h = digest("preprocess", m.input.get("sha256"), m.input.get("mask_sha256"), to_dict(self.cfg.preprocess),
                   *prompts)
        rec = self.store.stage("preprocess")
        folder = self.store.folder(PREPROCESS)
        if rec.hash == h and rec.state == "done":
            inputs = self._reuse(Inputs.load, folder, "preprocess", {})
            if inputs is not None:
                return inputs, h
            rec.hash = ""
        self._reset(rec, "preprocess", h, 1)
        try:
            photo = stored_input(folder, m.input, "stored_photo", "sha256")
            mask = stored_input(folder, m.input, "stored_mask", "mask_sha256") if m.input.get("stored_mask") else None
            inputs = preprocess.run(photo, mask, self.cfg.preprocess, *prompts, depth_normal=self.depth_normal)
        except BaseException as e:
            self._stage_error(rec, "preprocess", folder, e)
            if isinstance(e, GenemanError):
                raise
            raise StageFailed(f"preprocess failed: {rec.error} (traceback in {folder / 'error.log'})") from e
        self._digests["preprocess"] = _save_result(inputs, folder, {})
        set_aside_error_log(folder)  # an earlier failure's traceback: kept as error-<time>.log
        self._finish(rec, 1)
        return inputs, h

    def _reset(self, rec, name: str, h: str, total: int) -> None:
        """Start ``name``: afresh (cleared, and every stage after it) when its hash changed, else from its
        checkpoints; either way every later stage is cleared, as it was built on ``name``'s old result."""
        names = stage_names(self.stages)
        if rec.hash != h:
            self._invalidate_from(names.index(name))
            rec.hash, rec.step, rec.elapsed_s, rec.error = h, 0, 0.0, ""
        else:  # continued from its checkpoints: what came after it was built on its old result
            self._invalidate_from(names.index(name) + 1)
        rec.state, rec.total, rec.started, rec.error = "running", total, now(), ""
        self._t0 = time.monotonic()
        self.store.save()

    def _finish(self, rec, step: int) -> None:
        rec.state, rec.step, rec.finished = "done", step, now()
        self._tick(rec)
        self.store.save()

    def _stage(self, spec: StageSpec, index: int, inputs: Inputs, previous: Any, h: str) -> Any:
        rec = self.store.stage(spec.name)
        folder = self.store.folder(spec.folder)
        if rec.hash == h and rec.state == "done":
            result = self._reuse(spec.module.Result.load, folder, spec.name, self._upstream(index))
            if result is not None:
                return result
            rec.hash = ""
        stage_cfg = getattr(self.cfg, spec.name)
        if not hasattr(spec.module, "run"):
            rec.hash, rec.state, rec.total = h, "not-built", stage_cfg.steps
            self._set_status("blocked", f"stage {spec.name} is not built yet")
            raise StageNotBuilt(f"stage {spec.name} is not built yet: the run stops here, after "
                                f"{self._done_list(spec)}; outputs so far are in {self.store.root}")
        self._reset(rec, spec.name, h, stage_cfg.steps)
        seed_everything(self.cfg.seed + index)
        progress = Progress(spec.name, stage_cfg.steps, self.cfg.progress_every_s, self.quiet)
        ckpt = Checkpointer(folder / "ckpt", stage_cfg.steps, self.cfg.checkpoint.every_n_steps,
                            self.cfg.checkpoint.keep_last, progress, self.stop,
                            on_step=lambda step, saved: self._on_step(rec, step, saved))
        try:
            with deterministic(stage_device(self.priors)):
                result = spec.module.run(stage_cfg, inputs, previous, self.priors, ckpt)
        except BaseException as e:
            self._stage_error(rec, spec.name, folder, e)
            raise StageFailed(f"stage {spec.name} failed at step {rec.step}/{rec.total}: {rec.error} (traceback in "
                              f"{folder / 'error.log'}; fix and `geneman resume {self.store.root}`)") from e
        finally:
            progress.close()
        self._digests[spec.name] = _save_result(result, folder, self._upstream(index))
        set_aside_error_log(folder)
        self._finish(rec, stage_cfg.steps)
        return result

    def _upstream(self, index: int) -> dict[str, str]:
        """The digests of the results stage ``index`` (1 = the first) is built from: preprocess's and the
        previous stage's."""
        upstream = {"preprocess": self._digests["preprocess"]}
        if index > 1:
            before = self.stages[index - 2].name
            upstream[before] = self._digests[before]
        return upstream

    def _reuse(self, load: Callable[[Path], Any], folder: Path, name: str, upstream: dict[str, str]) -> Any | None:
        """A done stage's saved Result when its ``result/`` matches its DIGEST.json and was built from the
        results now before it (``upstream``); else None after one warning line: the caller redoes the stage,
        and with it every later one."""
        path = folder / "result"
        try:
            if not path.is_dir():
                raise DamagedResult(f"{path} is missing")
            record = verify_result(path)
            built_from = record["upstream"]
            if built_from != upstream:
                other = sorted(k for k in {*upstream, *built_from} if upstream.get(k) != built_from.get(k))
                raise DamagedResult(f"{path} was built from another {', '.join(other)} result than the one there now")
            log.info("%s: done before, loading its result", name)
            result = load(path)
        except Exception as e:  # noqa: BLE001 - any unusable result means: redo the stage
            reason = str(e) if isinstance(e, DamagedResult) else f"{path} cannot be read: {type(e).__name__}: {e}"
            log.warning("%s: its saved result cannot be used (%s); redoing %s and every stage after it",
                        name, " ".join(reason.split()), name)
            return None
        self._digests[name] = record["digest"]
        return result

    def _done_list(self, spec: StageSpec) -> str:
        names = stage_names(self.stages)
        return ", ".join(names[: names.index(spec.name)])

    def _tick(self, rec) -> float:
        """Add the time since the last tick to the stage's ``elapsed_s``; return the time now."""
        t = time.monotonic()
        rec.elapsed_s += t - self._t0
        self._t0 = t
        return t

    def _on_step(self, rec, step: int, saved: bool) -> None:
        rec.step = step
        t = self._tick(rec)
        if saved or t - self._last_write > 5.0:
            self._last_write = t
            self.store.save()

    def _stage_error(self, rec, name: str, folder: Path, e: BaseException) -> None:
        """Record an exception in run.json (and error.log) unless it is a clean stop."""
        self._tick(rec)
        if isinstance(e, Interrupted):
            rec.state = "interrupted"
            self._set_status("interrupted", str(e))
            raise e
        if isinstance(e, KeyboardInterrupt):
            rec.state, rec.error = "interrupted", "KeyboardInterrupt"
            self._set_status("interrupted", "KeyboardInterrupt")
            raise e
        rec.state = "failed"
        rec.error = (str(e) if isinstance(e, GenemanError) else f"{type(e).__name__}: {e}").splitlines()[0]
        atomic_write_bytes(folder / "error.log", "".join(traceback.format_exception(e)).encode())
        self._set_status("failed", f"{name}: {rec.error}")


def stored_input(folder: Path, record: dict, name_key: str, sha_key: str) -> Path:
    """The photo (or mask) copied into ``00_preprocess/``: a bare file name there whose sha256 is the manifest's.

    Raises:
        InputError: a name that is a path, a missing file or one whose bytes changed.
    """

    name = record.get(name_key)
    if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
        raise InputError(f"run.json's input.{name_key} {name!r} is not a file name in {folder}; the run folder is "
                         "damaged: start it again with `geneman run`")
    path = folder / name
    if not path.is_file() or path.is_symlink():
        raise InputError(f"{path} (the run's copy of its input) is missing; start the run again with `geneman run`")
    if sha256_file(path) != record.get(sha_key):
        raise InputError(f"{path} does not match the sha256 recorded in run.json; start the run again with "
                         "`geneman run`")
    return path


def _save_result(result: Any, folder: Path, upstream: dict[str, str]) -> str:
    """Save a Result into ``folder/result`` whole or not at all (temp folder, fsync, then rename), with its
    DIGEST.json (its files' sha256 and ``upstream``, the digests of the results it was built from); return
    its digest."""
    tmp = folder / "result.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    result.save(tmp)
    digest = write_result_digest(tmp, upstream)
    for path in sorted(tmp.rglob("*"), reverse=True):  # files first, then their folders
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        else:
            fsync_dir(path)
    fsync_dir(tmp)
    final = folder / "result"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_dir(folder)
    return digest

