"""``geneman export``: write the final textured mesh of a finished run to ``final/``.

The last stage's Result knows how to write itself (``Result.export(folder, formats)``), so this
module only checks that the run got there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.errors import InputError
from pipeline.run.runner import DEFAULT_STAGES, StageSpec
from pipeline.run.store import RunStore

FINAL = "final"


def export_run(root: Path, formats: Sequence[str], stages: Sequence[StageSpec] = DEFAULT_STAGES) -> list[Path]:
    """Export the last stage's result of the run in ``root`` to ``root/final``.

    Raises:
        InputError: the run has not finished its last stage.
    """
    store = RunStore(root)
    m = store.load()
    last = stages[-1]
    rec = m.stages.get(last.name)
    result_dir = store.folder(last.folder) / "result"
    if rec is None or rec.state != "done" or not result_dir.is_dir():
        state = rec.state if rec else "not started"
        raise InputError(f"{root} has no finished {last.name} result (state: {state}); "
                         f"finish the run first (`geneman resume {root}`, see `geneman status {root}`)")
    result = last.module.Result.load(result_dir)
    return result.export(store.folder(FINAL), list(formats))
