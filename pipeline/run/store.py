"""The run folder: ``run.json`` manifest, resolved ``config.yaml``, one folder per stage, a lock.

Every file here is written atomically (temp file, fsync, rename), so a kill at any instant leaves
either the old or the new version, never half of one.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import json
import logging
import os
import platform
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from pipeline.errors import DamagedResult, GenemanError, InputError, LockError

log = logging.getLogger("geneman")

MANIFEST = "run.json"
LOCK = ".lock"
PREPROCESS = "00_preprocess"
RESULT_DIGEST = "DIGEST.json"
"""In each ``result/``: the sha256 of its files and the digests of the results it was built from."""
LOCK_WAIT_S = 30.0
"""Longest wait for a lock whose holder cannot be told (an unreadable lock just being written)."""


def now() -> str:
    """UTC timestamp, ISO 8601, seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def file_mode() -> int:
    """The mode a new file gets under the current umask (0o666 less the umask), as ``open()`` gives."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, rename.

    The file gets the mode the umask gives (not mkstemp's 0600), so colleagues can read a shared run.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_STALE = (re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.tmp$"),  # atomic_write_bytes
          re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)(\.[A-Za-z0-9]+)?$"),  # stages/render/export.atomic_path
          re.compile(r"^\.(?P<name>.+)\.(?P<pid>)[a-z0-9_]{8}\.tmp$"))  # atomic_write_bytes before it named its pid
"""The names of geneman's own temp files: ``.NAME.PID.XXXXXXXX.tmp`` and ``.STEM.partial-PID.SUFFIX``."""


def remove_stale_partials(root: Path) -> list[Path]:
    """Remove the temp files that killed writers left in ``root`` and its direct subfolders (``final/``...).

    Only geneman's own names (:data:`_STALE`) whose pid is neither this process nor a live one on this host
    (a name without a pid, from an older geneman, counts as dead); call it holding ``root``'s lock.

    Returns:
        The files removed.
    """
    removed = []
    for folder in (root, *(p for p in _entries(root) if p.is_dir() and not p.is_symlink())):
        for path in _entries(folder):
            match = next(filter(None, (rx.match(path.name) for rx in _STALE)), None)
            pid = int(match["pid"]) if match and match["pid"] else None
            if match and pid != os.getpid() and not pid_alive(pid) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d temp file(s) of killed writers in %s", len(removed), root)
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def set_aside_error_log(folder: Path) -> Path | None:
    """Rename a stage folder's ``error.log`` (an earlier failure's) to ``error-<its time>.log``; its stage succeeded."""
    log_file = folder / "error.log"
    try:
        stamp = _dt.datetime.fromtimestamp(log_file.stat().st_mtime, _dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    except OSError:
        return None
    aside = folder / f"error-{stamp}.log"
    n = 1
    while aside.exists():
        n, aside = n + 1, folder / f"error-{stamp}-{n + 1}.log"
    os.replace(log_file, aside)
    return aside


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StageRecord:
    """What run.json says about one stage."""

    state: str = "pending"
    """pending | running | done | failed | interrupted | invalidated | not-built"""
    hash: str = ""
    step: int = 0
    total: int = 0
    started: str = ""
    finished: str = ""
    elapsed_s: float = 0.0
    error: str = ""


@dataclass
class Manifest:
    """The content of ``run.json``."""

    input: dict = field(default_factory=dict)
    status: str = "created"
    stages: dict[str, StageRecord] = field(default_factory=dict)
    created: str = field(default_factory=now)
    updated: str = ""
    error: str = ""
    versions: dict = field(default_factory=dict)
    host: str = ""
    pid: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        if not isinstance(d, dict) or not isinstance(d.get("stages", {}), dict):
            raise ValueError("not a JSON object with a 'stages' object")
        m = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "stages"})
        known = StageRecord.__dataclass_fields__
        m.stages = {k: StageRecord(**{f: x for f, x in v.items() if f in known})
                    for k, v in d.get("stages", {}).items()}
        return m


def check_manifest(m: Manifest) -> None:
    """Raise ValueError when a loaded manifest's fields do not have their types."""
    for name, kind in (("input", dict), ("status", str), ("error", str), ("extra", dict), ("versions", dict)):
        if not isinstance(getattr(m, name), kind):
            raise ValueError(f"'{name}' is not a {kind.__name__}")
    for stage, rec in m.stages.items():
        for name, kind in (("step", int), ("total", int), ("elapsed_s", (int, float)), ("state", str),
                           ("hash", str), ("error", str)):
            value = getattr(rec, name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"stages.{stage}.{name} is {value!r}")


def package_versions() -> dict:
    """Versions of python and the packages that decide the numbers."""
    out = {"python": platform.python_version()}
    for name in ("geneman", "torch", "numpy", "diffusers", "transformers", "omegaconf", "trimesh"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


class RunStore:
    """One run folder. Construct, then :meth:`load` or :meth:`create` the manifest."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest = Manifest()

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        """True when the folder holds a run (a manifest)."""
        return self.manifest_path.is_file()

    def load(self) -> Manifest:
        """Read ``run.json``.

        Raises:
            InputError: no run folder (also a file given as one), or a run.json that is not a manifest.
        """
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root} is a file, not a geneman run folder")
        try:
            data = json.loads(self.manifest_path.read_text())
            self.manifest = Manifest.from_dict(data)
            check_manifest(self.manifest)
        except FileNotFoundError:
            raise InputError(f"{self.root} is not a geneman run folder (no {MANIFEST}); "
                             "start one with `geneman run`") from None
        except (ValueError, TypeError, AttributeError) as e:
            raise InputError(f"{self.manifest_path} is unreadable ({' '.join(str(e).split())}); "
                             "the run folder is damaged") from None
        except OSError as e:
            raise InputError(f"cannot read {self.manifest_path}: {e.strerror or e}") from None
        return self.manifest

    def save(self) -> None:
        """Write ``run.json`` atomically."""
        self.manifest.updated = now()
        data = asdict(self.manifest)
        atomic_write_bytes(self.manifest_path, (json.dumps(data, indent=2) + "\n").encode())

    def stage(self, name: str) -> StageRecord:
        """The record of stage ``name`` (created pending when new)."""
        return self.manifest.stages.setdefault(name, StageRecord())

    def folder(self, name: str) -> Path:
        """The folder of a stage (``00_preprocess``, ``01_geometry_init``, ...)."""
        return self.root / name

    def clear_folder(self, name: str) -> None:
        """Delete a stage folder's content (its results are invalid)."""
        shutil.rmtree(self.folder(name), ignore_errors=True)

    def write_text(self, rel: str, text: str) -> None:
        """Atomically write a text file inside the run folder."""
        atomic_write_bytes(self.root / rel, text.encode())

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder's lock for the duration of the block.

        The lock is a file created exclusively, holding host and pid. A lock left by a dead
        process on this host is taken over with a warning; a live one raises :class:`LockError`.
        """
        path = self.root / LOCK
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": now(), "argv": sys.argv[:3]}
        deadline = time.monotonic() + LOCK_WAIT_S
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
                    break
                except FileExistsError:
                    _take_over_if_stale(path)
                if time.monotonic() > deadline:
                    raise LockError(f"{path} could not be taken within {LOCK_WAIT_S:.0f} s; if no geneman process "
                                    f"uses {self.root}, delete {path}")
        except (FileExistsError, NotADirectoryError):
            raise InputError(f"{self.root} is a file, not a folder; choose another -o folder") from None
        except PermissionError:
            raise InputError(f"{self.root} is not writable (permission denied); choose another -o folder or "
                             "fix its permissions") from None
        except OSError as e:
            if isinstance(e, GenemanError):
                raise
            raise InputError(f"cannot write to {self.root}: {e.strerror or e}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        try:
            remove_stale_partials(self.root)
            yield
        finally:
            try:
                if json.loads(path.read_text()).get("pid") == me["pid"]:
                    path.unlink()
            except (OSError, ValueError, AttributeError):
                pass


def lock_holder(root: Path) -> dict | None:
    """The live process holding ``root``'s lock, or None (no lock, or its process is gone)."""
    try:
        holder = json.loads((root / LOCK).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict):
        return None
    if holder.get("host") != socket.gethostname():
        return holder  # cannot check a process on another host: trust the lock
    return holder if pid_alive(holder.get("pid")) else None


def pid_alive(pid) -> bool:
    """True when a process ``pid`` exists on this host (False for anything that is not a pid)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_if_unchanged(path: Path, holder: dict) -> bool:
    """Remove the lock ``path`` only if it still holds ``holder`` (what was judged stale).

    Renaming first makes the check and the removal one step for racing processes: of two that
    judged the same lock stale, the second finds the first one's fresh lock and puts it back.
    """
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        try:
            now_held = json.loads(aside.read_text() or "{}")
        except (OSError, ValueError):
            now_held = {}
        if now_held != holder:  # someone else took it over in between: give it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            return False
        return True
    finally:
        aside.unlink(missing_ok=True)


def _take_over_if_stale(path: Path) -> None:
    """Remove ``path`` when the process that holds it is dead; raise LockError when it lives.

    A lock that is a symlink (geneman never makes one) is removed with a warning (never its
    target); a folder or an unreadable file is a one-line :class:`LockError`.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        path.unlink(missing_ok=True)
        log.warning("took over lock %s, a symlink (not a geneman lock)", path)
        return
    if not stat.S_ISREG(st.st_mode):
        raise LockError(f"{path} is not a lock file (a folder or other); remove it if no geneman process "
                        f"uses {path.parent}")
    try:
        holder = json.loads(path.read_text() or "{}")
    except PermissionError:
        raise LockError(f"{path} cannot be read (permission denied); if no geneman process uses "
                        f"{path.parent}, delete it") from None
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict):
        holder = {}
    host, pid = holder.get("host"), holder.get("pid")
    if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        if _remove_if_unchanged(path, holder):
            log.warning("took over stale lock %s of dead process %s (since %s)", path, pid, holder.get("since", "?"))
        return
    if not holder:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return
        if 0 <= age < 5:  # its creator may not have written its pid yet (a future mtime is no creator)
            time.sleep(0.05)
            return
        if _remove_if_unchanged(path, holder):
            log.warning("took over unreadable lock %s", path)
        return
    raise LockError(f"{path.parent} is in use by pid {pid} on {host} since {holder.get('since', '?')}; "
                    f"wait for it, or delete {path} if that process is gone")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _result_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under a ``result/`` folder (``DIGEST.json`` aside), by path relative to it."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != RESULT_DIGEST}


def _record_digest(files: dict, upstream: dict) -> str:
    return hashlib.sha256(json.dumps([files, upstream], sort_keys=True).encode()).hexdigest()


def write_result_digest(folder: Path, upstream: dict[str, str]) -> str:
    """Write ``folder/DIGEST.json``: the sha256 of each file in ``folder``, ``upstream`` (the digests of the
    results it was built from, by stage name) and ``digest``, the sha256 of both; return ``digest``.

    Called on the temporary result folder before it is fsynced and renamed, so the digest is part of the
    result's whole-or-nothing save.
    """
    files = _result_files(folder)
    record = {"digest": _record_digest(files, upstream), "files": files, "upstream": dict(upstream)}
    (folder / RESULT_DIGEST).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record["digest"]


def verify_result(folder: Path) -> dict:
    """The ``DIGEST.json`` record of a ``result/`` folder (``digest``, ``files``, ``upstream``) once every file
    matches it.

    Raises:
        DamagedResult: no (or an unreadable) DIGEST.json, a file missing, altered, truncated or not listed;
            the message says what, not what to do.
    """
    path = folder / RESULT_DIGEST
    if not path.is_file():
        raise DamagedResult(f"{folder} has no {RESULT_DIGEST} (saved by a geneman without result digests, or "
                            "damaged), so it cannot be verified")
    try:
        record = json.loads(path.read_text())
        files, upstream = record["files"], record["upstream"]
        if not (isinstance(files, dict) and isinstance(upstream, dict)) or \
                record["digest"] != _record_digest(files, upstream):
            raise ValueError("its digest does not match its content")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedResult(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    actual = _result_files(folder)
    for name in sorted(set(files) | set(actual)):
        if name not in actual:
            raise DamagedResult(f"{folder / name} is missing")
        if name not in files:
            raise DamagedResult(f"{folder / name} is not listed in {path}")
        if actual[name] != files[name]:
            raise DamagedResult(f"{folder / name} does not match its sha256 in {path} (altered or truncated)")
    return record
