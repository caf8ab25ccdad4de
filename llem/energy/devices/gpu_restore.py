"""Restore records: what a GPU's settings were before llem changed them, and which process changed them.

One JSON file per GPU UUID in one directory per machine (`LLEM_GPU_RESTORE_DIR`, default
/var/tmp/llem-gpu-restore, which survives a process crash), written atomically before the first
change. The owner removes its record after restoring. A record whose owner is gone (kill -9, out of
memory) is stale: whoever finds it next restores the original values first, so a crashed run never
leaves a GPU capped. The owner is identified by PID and the process's start time, so a reused PID
does not keep a dead owner's record alive.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from llem.atomic import atomic_write_json

RESTORE_DIR_ENV = "LLEM_GPU_RESTORE_DIR"
DEFAULT_RESTORE_DIR = "/var/tmp/llem-gpu-restore"


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None where /proc does not say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def launcher_pid() -> int | None:
    """The launcher's PID when this process is a campaign worker (`python -m llem.launch.worker`), else None."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return os.getppid() if getattr(spec, "name", None) == "llem.launch.worker" else None


def owner_alive(pid: int, started: str | None) -> bool:
    """Whether process `pid` still runs and is the same process (not a later one given the same PID)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = process_start(pid)
    if started is not None and now is not None and now != started:
        return False
    try:  # a zombie has ended: it will never restore anything
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class RestoreRecord:
    """The original settings of one GPU and the process that changed them."""

    uuid: str
    pid: int
    pid_start: str | None
    host: str
    original_power_limit_mw: int | None = None  # set only when llem changed the power limit
    locked_clocks: list[str] = field(default_factory=list)  # "sm", "mem": reset to unlocked on restore
    applied: dict[str, Any] = field(default_factory=dict)  # what is set now, for the doctor to show
    created_at: str = ""
    launcher_pid: int | None = None  # set by a campaign worker: the launcher that gives it jobs

    @classmethod
    def mine(cls, uuid: str) -> RestoreRecord:
        pid = os.getpid()
        return cls(uuid=uuid, pid=pid, pid_start=process_start(pid), host=socket.gethostname(),
                   created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   launcher_pid=launcher_pid())  # fmt: skip

    def adopt(self) -> None:
        """Become the owner (keeping the original values): see `sibling`."""
        self.pid = os.getpid()
        self.pid_start = process_start(self.pid)
        self.launcher_pid = launcher_pid()

    @property
    def sibling(self) -> bool:
        """Owned by another worker of this process's launcher. The launcher runs one job per GPU at a time, so
        that worker is idle and its settings may be taken over (a warm worker keeps them between jobs)."""
        mine = launcher_pid()
        return mine is not None and self.launcher_pid == mine and self.pid != os.getpid()

    @property
    def is_mine(self) -> bool:
        return self.pid == os.getpid() and self.pid_start == process_start(self.pid)

    @property
    def stale(self) -> bool:
        """The owner is gone, so nobody else will restore this GPU."""
        return not owner_alive(self.pid, self.pid_start)

    def describe(self) -> str:
        parts = []
        if self.original_power_limit_mw is not None:
            parts.append(f"power limit {self.original_power_limit_mw / 1000:g} W")
        parts += [f"{which} clock unlocked" for which in self.locked_clocks]
        now = ", ".join(f"{k}={v}" for k, v in self.applied.items())
        return f"{self.uuid}: set by PID {self.pid} ({now or 'nothing yet'}); original: {', '.join(parts) or '-'}"


class RestoreRecords:
    """The machine's restore records; each GPU's file is read and changed under its own lock."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(directory or os.environ.get(RESTORE_DIR_ENV) or DEFAULT_RESTORE_DIR)

    def _path(self, uuid: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in uuid)
        return self.dir / f"{safe}.json"

    def lock(self, uuid: str) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self._path(uuid)) + ".lock")

    def read(self, uuid: str) -> RestoreRecord | None:
        return self._load(self._path(uuid))

    @staticmethod
    def _load(path: Path) -> RestoreRecord | None:
        try:
            data = json.loads(path.read_text())
            return RestoreRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as error:
            raise RuntimeError(f"unreadable GPU restore record {path}: {error}") from None

    def write(self, record: RestoreRecord) -> None:
        atomic_write_json(self._path(record.uuid), asdict(record))

    def remove(self, uuid: str) -> None:
        self._path(uuid).unlink(missing_ok=True)

    def all(self) -> list[RestoreRecord]:
        if not self.dir.is_dir():
            return []
        records = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                record = self._load(path)
            except RuntimeError:
                continue  # not a record llem wrote (they are written atomically): nothing to restore from it
            if record is not None:
                records.append(record)
        return records


def restore_gpu(control: Any, records: RestoreRecords, record: RestoreRecord) -> list[str]:
    """Put one GPU's original settings back (a `GpuControl`), then drop its record; the problems, if any.

    Call with the GPU's record lock held. A record whose GPU could not be restored is kept, so a
    later attempt (the doctor, the next run) tries again.
    """
    from llem.energy.devices.gpu_control import GpuControlError

    problems: list[str] = []
    if record.original_power_limit_mw is not None:
        try:
            control.set_power_limit_mw(record.uuid, record.original_power_limit_mw)
        except GpuControlError as error:
            problems.append(str(error))
    for which in record.locked_clocks:
        try:
            control.reset_clocks(record.uuid, which)
        except GpuControlError as error:
            problems.append(str(error))
    if not problems:
        records.remove(record.uuid)
    return problems


def restore_stale(nvml: Any = None, records: RestoreRecords | None = None) -> tuple[list[str], list[str]]:
    """Restore every GPU whose record's owner is gone: (what was restored, what could not be).

    Cheap when there is nothing to do (no NVML is opened without a stale record).
    """
    from llem.energy.devices import DeviceUnavailable
    from llem.energy.devices.gpu_control import GpuControl

    records = records or RestoreRecords()
    stale = [r for r in records.all() if r.stale]
    if not stale:
        return [], []
    try:
        control = GpuControl(nvml)
    except DeviceUnavailable as error:
        return [], [f"cannot restore {len(stale)} GPU(s) left changed by a process that is gone: {error.reason}"]
    restored: list[str] = []
    failed: list[str] = []
    try:
        for candidate in stale:
            with records.lock(candidate.uuid):
                record = records.read(candidate.uuid)  # another process may have restored it meanwhile
                if record is None or not record.stale:
                    continue
                problems = restore_gpu(control, records, record)
                if problems:
                    failed.append(f"GPU {record.uuid} (changed by PID {record.pid}, gone): " + "; ".join(problems))
                else:
                    restored.append(f"restored GPU {record.uuid}, left changed by PID {record.pid} (gone): "
                                    + record.describe().split("original: ", 1)[1])  # fmt: skip
    finally:
        control.close()
    return restored, failed
