"""Atomic file writes: a reader (or a resumed campaign) never sees a half-written file."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable


CRASH_ENV = "LLEM_CRASH_AT_WRITE"
_writes: dict[str, int] = {}


def crash_point(path: Path) -> None:
    """Fault injection for crash tests: `LLEM_CRASH_AT_WRITE=<file name>:<n>` kills this process
    (SIGKILL) during its n-th write of that file at the worst moment: for an atomic file write, after the
    temp file is written and before the rename; for the campaign database, before a transaction commits."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if name != path.name:
        return
    _writes[name] = _writes.get(name, 0) + 1
    if _writes[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        crash_point(path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def remove_stale_temps(directory: Path, pattern: str = ".*.tmp") -> list[Path]:
    """Delete temp files a killed writer left (call only while no writer can be active)."""
    removed = []
    for path in Path(directory).glob(pattern):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
