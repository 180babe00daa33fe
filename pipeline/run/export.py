"""``geneman export``: write the final files of a finished run to ``final/``.

The last stage's Result knows how to write itself (``Result.export(folder, formats, cfg)``, see
:class:`stages.textured_mesh.TexturedMesh`), so this module only checks that the run got there and
reads what to write from the run's own ``config.yaml`` (``export.*``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.errors import DamagedResult, InputError
from pipeline.run.runner import DEFAULT_STAGES, FINAL, StageSpec
from pipeline.run.session import load_run_config
from pipeline.run.store import RunStore, verify_result
from pipeline.run.targets import check_export


def last_result_folder(store: RunStore, stages: Sequence[StageSpec]) -> tuple[StageSpec, Path]:
    """The last stage and its ``result/`` folder, when run.json (``store``'s loaded manifest) says that
    stage is done and the folder matches its DIGEST.json (``geneman export`` and ``geneman eval`` read it).

    Raises:
        InputError: the last stage has not finished (names the run folder, its state, what to do).
        DamagedResult: its result was altered, truncated or has no digest (see :func:`verified`).
    """
    last = stages[-1]
    rec = store.manifest.stages.get(last.name)
    folder = store.folder(last.folder) / "result"
    if rec is None or rec.state != "done" or not folder.is_dir():
        state = rec.state if rec else "not started"
        raise InputError(f"{store.root} has no finished {last.name} result (state: {state}, expected in {folder}); "
                         f"finish the run first (`geneman resume {store.root}`, see `geneman status {store.root}`)")
    if not hasattr(last.module, "Result"):
        raise InputError(f"stage {last.name} has no Result to load yet, so {folder} cannot be read")
    verified(store, folder)
    return last, folder


def verified(store: RunStore, folder: Path) -> None:
    """Check a ``result/`` folder of ``store`` against its DIGEST.json before anything reads it.

    Raises:
        DamagedResult: one line naming the file and what is wrong, and that ``geneman resume`` redoes it.
    """
    try:
        verify_result(folder)
    except DamagedResult as e:
        raise DamagedResult(f"{e}; `geneman resume {store.root}` redoes that stage and every later one") from None


def export_run(root: Path, formats: Sequence[str] | None = None,
               stages: Sequence[StageSpec] = DEFAULT_STAGES) -> list[Path]:
    """Export the last stage's result of the run in ``root`` to ``root/final``.

    Args:
        root: the run folder.
        formats: names of :data:`stages.final.FORMATS` to write; None or empty: the run's
            ``export.formats``. The video and preview sizes are always the run's ``export.*``. Files of
            formats not written are left as they are.
        stages: the run's stages (the last one's Result is exported).

    Returns:
        The paths written.

    Raises:
        InputError: the run has not finished its last stage.
        DamagedResult: its result does not match its DIGEST.json.
        LockError: another process holds the run folder.
        ConfigError: the run's config.yaml does not load.
    """
    store = RunStore(root)
    store.load()
    check_export(root, FINAL, formats or load_run_config(root).export.formats)  # before any rendering
    with store.lock():  # not while a run writes final/; taking it removes killed writers' temp files
        last, result_dir = last_result_folder(store, stages)
        cfg = load_run_config(root).export
        result = last.module.Result.load(result_dir)
        return result.export(store.folder(FINAL), list(formats or cfg.formats), cfg)
