"""Output folders checked before long work: ``geneman export`` (``final/``), ``geneman eval`` (``eval.json``)
and ``geneman bench`` (OUT) each call :func:`check_writable` first, so that a folder that cannot be written
is one line and exit 2 (:class:`pipeline.errors.InputError`) before anything renders, not an ``OSError``
after it.

The check does what the atomic writes do (``pipeline.run.store.atomic_write_bytes``,
``stages.render.export.atomic_path``): make a temporary file in the folder and remove it. A folder not
made yet is checked at its nearest existing parent, and nothing is created: a refused command leaves
no trace.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from pipeline.errors import InputError

FINAL_FILES = {
    "glb": ("avatar.glb", "mesh.glb"),
    "obj": ("avatar.obj", "avatar.mtl", "avatar_albedo.png", "mesh.obj"),
    "turntable": ("turntable.mp4",),
    "preview": ("preview.png",),
}
"""The files each of :data:`stages.final.FORMATS` writes into ``final/`` (``avatar.*`` from the texture stage's
Result, ``mesh.*`` from a geometry stage's)."""


def final_files(formats: Iterable[str]) -> list[str]:
    """The names in ``final/`` that ``formats`` write (unknown formats: none; the export names them)."""
    return [name for fmt in formats for name in FINAL_FILES.get(fmt, ())]


def _existing(folder: Path) -> Path:
    """``folder``, or its nearest parent that exists (a dangling link counts as existing)."""
    probe = folder
    while not (probe.exists() or probe.is_symlink()) and probe.parent != probe:
        probe = probe.parent
    return probe


def check_writable(folder: Path, files: Iterable[str] = (), folders: Iterable[str] = ()) -> None:
    """Check that ``files`` (names) and the sub-folders ``folders`` can be written into ``folder``,
    making ``folder`` where it is missing; create nothing.

    Args:
        folder: where the command writes (it may not exist yet).
        files: names of the files it writes there (each must not be a folder).
        folders: names of sub-folders it writes into (each must not be a file).

    Raises:
        InputError: one line naming the path: a file (or a dangling link) where a folder is needed, a
            folder where a file is written, or a folder in which no file can be created (read-only,
            permissions).

    Example:
        >>> import tempfile; out = Path(tempfile.mkdtemp())
        >>> check_writable(out / "new" / "run", ["bench.json"], ["run"])  # nothing is made
        >>> (out / "new").exists()
        False
    """
    folder = Path(folder)
    try:
        probe = _existing(folder)
    except OSError as e:  # a parent that cannot be searched
        raise InputError(f"cannot look into {e.filename or folder}: {e.strerror}; choose a folder you can "
                         "write to, or change its permissions") from None
    if not probe.is_dir():
        kind = "a dangling link" if probe.is_symlink() and not probe.exists() else "a file"
        where = "" if probe == folder else f", so {folder} cannot be made"
        raise InputError(f"{probe} is {kind}, not a folder{where}; move it away or choose another output folder")
    if probe == folder:
        for name in files:
            if (folder / name).is_dir():
                raise InputError(f"{folder / name} is a folder, where a file is to be written; move it away")
        for name in folders:
            path = folder / name
            if (path.exists() or path.is_symlink()) and not path.is_dir():
                raise InputError(f"{path} is a file, not a folder; move it away")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".geneman-write-check.", dir=probe)
    except OSError as e:
        what = "" if probe == folder else f" (to make {folder} in it)"
        raise InputError(f"cannot write into {probe}{what}: {e.strerror}; choose a folder you can write to, "
                         "or change its permissions") from None
    os.close(fd)
    os.unlink(tmp)


def check_export(root: Path, final: str, formats: Iterable[str]) -> None:
    """``geneman export``'s targets: the run folder ``root`` (its lock is made there) and its ``final``
    sub-folder, where ``formats`` write :func:`final_files`.

    Raises:
        InputError: as :func:`check_writable`.
    """
    check_writable(root, folders=[final])
    check_writable(Path(root) / final, final_files(formats))
