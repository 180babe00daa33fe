"""Start or resume a run folder: validate first, then lock, record and hand over to the runner.

Bad input is refused before the run folder is touched, so an existing run is never damaged by
a mistyped command.
"""
from __future__ import annotations

import os
import socket
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Sequence

from pipeline.config import RunConfig, load_config, to_yaml
from pipeline.errors import InputError
from pipeline.run import models, preprocess
from pipeline.run.runner import DEFAULT_STAGES, Runner, StageSpec, check_stage_name
from pipeline.run.signals import DEFAULT_SIGNALS, StopSignals
from pipeline.run.store import LOCK, PREPROCESS, RunStore, atomic_write_bytes, package_versions, sha256_file

CONFIG = "config.yaml"


def start(photo: Path, out: Path, cfg: RunConfig, mask: Path | None = None,
          stages: Sequence[StageSpec] = DEFAULT_STAGES, priors: Any = models.AUTO,
          depth_normal: Any = models.AUTO, from_stage: str | None = None, quiet: bool = False,
          signals: Iterable[int] = DEFAULT_SIGNALS, stop: StopSignals | None = None,
          extra: dict | None = None, until: str | None = None) -> Any:
    """Run ``photo`` into the run folder ``out`` (continuing it when it holds a run of the same photo).

    ``priors`` and ``depth_normal`` are resolved by :func:`pipeline.models.prepare` (default: a
    PriorSet built from ``cfg``, its weights checked before the folder is touched). ``stop``: a
    stop flag whose handlers the caller already holds (a batch job); else ``signals`` are
    installed for the run. ``extra`` is merged into the manifest's ``extra`` before anything runs.
    ``until``: stop after that stage (status ``paused``); only the weights up to it are checked.

    Returns:
        The last stage's Result.

    Raises:
        InputError: bad photo or mask, or ``out`` holds a run of another photo.
        GenemanError: whatever the runner raises (stage not built, failed, interrupted).
    """
    photo, out = Path(photo), Path(out)
    for name in (from_stage, until):
        if name:
            check_stage_name(name, stages)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder; choose another -o folder")
    img = preprocess.read_photo(photo, cfg.preprocess.max_pixels)
    preprocess.person_mask(img, mask, cfg.preprocess, photo)
    sha = sha256_file(photo)
    mask_sha = sha256_file(mask) if mask else ""
    will_run = stages[:[s.name for s in stages].index(until) + 1] if until and until != "preprocess" else (
        () if until else stages)
    priors, depth_normal = models.prepare(cfg, will_run, priors, depth_normal)
    store = RunStore(out)
    _check_folder(store, sha, mask_sha)
    with store.lock():
        _check_folder(store, sha, mask_sha)  # again under the lock: another process may have written it since
        store.manifest.extra.update(extra or {})
        _record_input(store, photo, mask, sha, mask_sha)
        store.write_text(CONFIG, to_yaml(cfg))
        return _run(store, cfg, stages, priors, depth_normal, from_stage, quiet, signals, stop, until)


def resume(out: Path, stages: Sequence[StageSpec] = DEFAULT_STAGES, priors: Any = models.AUTO,
           depth_normal: Any = models.AUTO, from_stage: str | None = None, quiet: bool = False,
           signals: Iterable[int] = DEFAULT_SIGNALS, cfg: RunConfig | None = None,
           stop: StopSignals | None = None) -> Any:
    """Continue the run in ``out`` with its stored config (or ``cfg``, which invalidates what it changes).

    The stored config's weight locations are not used (see :func:`load_run_config`). The other
    arguments are as in :func:`start`.
    """
    out = Path(out)
    store = RunStore(out)
    if not store.exists() and out.is_dir() and any(out.iterdir()) and _only_leftovers(store):
        raise InputError(f"{out} holds a run stopped before it began; start it again with "
                         f"`geneman run PHOTO -o {out}`")
    store.load()
    if from_stage:
        check_stage_name(from_stage, stages)
    with store.lock():
        store.load()
        if cfg is None:
            cfg = load_run_config(out)
        priors, depth_normal = models.prepare(cfg, stages, priors, depth_normal)
        store.write_text(CONFIG, to_yaml(cfg))
        return _run(store, cfg, stages, priors, depth_normal, from_stage, quiet, signals, stop)


def _check_folder(store: RunStore, sha: str, mask_sha: str) -> None:
    """Load the run in ``store`` if any; refuse a folder that holds another photo's run or other files."""
    if store.exists():
        held = store.load().input
        if (held.get("sha256"), held.get("mask_sha256", "")) != (sha, mask_sha):
            raise InputError(f"{store.root} holds a run of {held.get('path')} (another photo or mask); "
                             "choose another -o folder, or `geneman resume` that run")
    elif store.root.exists() and not _only_leftovers(store):
        raise InputError(f"{store.root} exists and is not empty, and is not a geneman run folder; "
                         "choose another -o folder")


def _only_leftovers(store: RunStore) -> bool:
    """True when the folder holds nothing or only what :func:`start` writes before the first run.json
    (the lock, config.yaml, the photo and mask copies, temp files): a start cut short, to start again."""
    def ours(p: Path, names: tuple[str, ...]) -> bool:
        return p.name.startswith(names) or (p.name.startswith(".") and p.name.endswith(".tmp"))
    for p in store.root.iterdir():
        if p.name == PREPROCESS and p.is_dir() and not p.is_symlink():
            if not all(q.is_file() and ours(q, ("photo", "mask_input")) for q in p.iterdir()):
                return False
        elif not ((p.is_file() or p.is_symlink()) and ours(p, (LOCK, CONFIG))):
            return False
    return True


def load_run_config(out: Path, sets: Sequence[str] = ()) -> RunConfig:
    """The resolved config stored in a run folder, with ``sets`` on top.

    The file must hold every section and key (a file cut short is a one-line ConfigError naming the first
    missing key, never the defaults); it is only read, never rewritten here. Weight locations
    (``priors.weights_dir``, hub ids, files, folders) are not read from the run folder: they come from
    ``sets`` (``--weights``, ``--set priors...``) or the schema defaults.
    """
    return load_config(None, Path(out) / CONFIG, list(sets), run_folder_config=True, complete=True)


def _record_input(store: RunStore, photo: Path, mask: Path | None, sha: str, mask_sha: str) -> None:
    """Copy the photo (and mask) into the run folder once, and describe them in the manifest."""
    m = store.manifest
    folder = store.folder(PREPROCESS)
    stored = "photo" + photo.suffix.lower()
    if not (folder / stored).is_file() or sha256_file(folder / stored) != sha:
        atomic_write_bytes(folder / stored, photo.read_bytes())
    m.input.update({"path": str(photo.resolve()), "sha256": sha, "stored_photo": stored})
    if mask is not None:
        stored_mask = "mask_input" + mask.suffix.lower()
        if not (folder / stored_mask).is_file() or sha256_file(folder / stored_mask) != mask_sha:
            atomic_write_bytes(folder / stored_mask, mask.read_bytes())
        m.input.update({"mask_path": str(mask.resolve()), "mask_sha256": mask_sha, "stored_mask": stored_mask})
    store.save()


def _run(store: RunStore, cfg: RunConfig, stages, priors, depth_normal, from_stage, quiet, signals, stop,
         until: str | None = None) -> Any:
    m = store.manifest
    m.versions, m.host, m.pid = package_versions(), socket.gethostname(), os.getpid()
    store.save()
    with (nullcontext(stop) if stop is not None else StopSignals(signals)) as flag:
        runner = Runner(store, cfg, stages, priors=priors, depth_normal=depth_normal, quiet=quiet, stop=flag)
        return runner.run(from_stage=from_stage, until=until)
