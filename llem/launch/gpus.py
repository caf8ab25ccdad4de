"""The node's GPUs as a launcher sees them: which ones it may use, and a lock per GPU across campaigns.

GPUs are identified by UUID (NVML order and CUDA order may differ; UUIDs do not). A lock per
UUID, held while a worker of this campaign is pinned to that GPU, keeps a second campaign on
the same node off it: the second one waits for the GPU, or is refused after its timeout.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

LOCK_DIR_ENV = "LLEM_GPU_LOCK_DIR"


@dataclass(frozen=True, order=True)
class Gpu:
    index: int  # NVML (PCI) index on the node
    uuid: str

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.uuid})"


class GpuSelectionError(ValueError):
    """`hydra.launcher.gpus` names GPUs this node does not have; the message says which exist."""


def node_gpus(selection: Any, *, nvml: Any = None) -> list[Gpu]:
    """The GPUs `selection` names (`all`/`auto`, a list of NVML indices or UUIDs; null: none), via NVML
    (`nvml`: a module to use instead of `pynvml`)."""
    if selection is None:
        return []
    from llem.energy.devices import DeviceUnavailable
    from llem.energy.devices.nvml import NvmlDevices

    try:
        with NvmlDevices.open(None, nvml=nvml, environ={}) as devices:
            found = [Gpu(devices.nvml_index(i), devices.uuid(i)) for i in devices.indices]
    except DeviceUnavailable:
        found = []
    if isinstance(selection, str) and selection in ("all", "auto"):
        return sorted(found)
    wanted = [selection] if isinstance(selection, (int, str)) else list(selection)
    picked: list[Gpu] = []
    for item in wanted:
        match = [g for g in found if (str(item).isdigit() and g.index == int(item)) or g.uuid == str(item)]
        if not match:
            known = ", ".join(f"{g.index} ({g.uuid})" for g in found) or "none"
            raise GpuSelectionError(f"hydra.launcher.gpus: no GPU {item!r} on this node (GPUs: {known})")
        picked.append(match[0])
    return sorted(dict.fromkeys(picked))


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "llem-gpu-locks")


class GpuLocks:
    """One OS file lock per GPU UUID (released by the kernel if the holder dies), plus a note naming the holder."""

    def __init__(self, owner: str, lock_dir: Path | None = None) -> None:
        self.dir = Path(lock_dir or default_lock_dir())
        self.owner = owner
        self._held: dict[str, FileLock] = {}

    def _paths(self, gpu: Gpu) -> tuple[Path, Path]:
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in gpu.uuid)
        return self.dir / f"{name}.lock", self.dir / f"{name}.owner.json"

    def holder(self, gpu: Gpu) -> str:
        """Who holds `gpu` (from its note), for messages."""
        try:
            note = json.loads(self._paths(gpu)[1].read_text())
            return f"PID {note.get('pid')} on {note.get('host')} ({note.get('owner')})"
        except (OSError, ValueError):
            return "another process"

    def try_acquire(self, gpus: Sequence[Gpu]) -> Gpu | None:
        """Take every lock of `gpus` or none, in UUID order; returns the first GPU held elsewhere, or None on success.

        Every campaign takes locks in the same order, so two that want overlapping sets meet at the first GPU they
        share instead of each holding a part the other waits for. On failure this call holds none of `gpus`, also
        those it held before (the GPUs of an evicted worker): holding a part while waiting for the rest deadlocks.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        wanted = sorted(dict.fromkeys(gpus), key=lambda g: g.uuid)
        for gpu in wanted:
            if gpu.uuid in self._held:
                continue
            lock_path, note_path = self._paths(gpu)
            lock = FileLock(str(lock_path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                self.release(wanted)
                return gpu
            self._held[gpu.uuid] = lock
            note_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "owner": self.owner}))
        return None

    def acquire(self, gpus: Sequence[Gpu], timeout_s: float | None, on_wait: Any = None) -> None:
        """Take the locks of `gpus`, waiting while another campaign holds one (at most `timeout_s`; None: forever).

        Raises `GpuBusy` after the timeout. `on_wait(gpu, holder)` is called once when waiting starts.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        told = False
        while True:
            busy = self.try_acquire(gpus)
            if busy is None:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise GpuBusy(f"{busy.label} is in use by {self.holder(busy)}; gave up after {timeout_s:g} s. Give "
                              "the campaigns disjoint hydra.launcher.gpus, or wait longer with "
                              "hydra.launcher.gpu_lock_timeout_s")
            if not told and on_wait is not None:
                on_wait(busy, self.holder(busy))
                told = True
            time.sleep(0.2)

    def release(self, gpus: Iterable[Gpu]) -> None:
        for gpu in gpus:
            lock = self._held.pop(gpu.uuid, None)
            if lock is not None:
                self._paths(gpu)[1].unlink(missing_ok=True)
                lock.release()

    def release_all(self) -> None:
        for lock in list(self._held.values()):
            Path(lock.lock_file).with_suffix(".owner.json").unlink(missing_ok=True)
            lock.release()
        self._held.clear()


class GpuBusy(RuntimeError):
    """Another campaign holds a GPU this one needs, past the lock timeout."""
