"""Sizes and memory that engines do not report themselves: checkpoint files, process trees, and the
one shape every backend's `memory_stats()` returns.

Every backend reports the same four figures, each with how it was measured or why it is null:

- `weights_bytes`: the model weights as held in memory;
- `peak_allocated_bytes`: weights + activations + KV cache actually in use, peak over the window;
- `reserved_bytes`: the pool the engine set aside (allocator reserve, or weights + KV cache pool);
- `host_peak_rss_bytes`: peak resident memory of this process and its engine processes over the window.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MEMORY_FIELDS = (
    "weights_bytes", "peak_allocated_bytes", "reserved_bytes", "kv_cache_peak_bytes", "host_peak_rss_bytes"
)

_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

def _safetensors_sizes(directory: Path) -> tuple[int, int, bool] | None:
    """(element count, bytes on disk, any packed integer weights) of the checkpoint, from file headers only."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    numel = nbytes = 0
    packed = False
    for file in files:
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = math.prod(entry["shape"])
            numel += count
            nbytes += count * _SAFETENSORS_BYTES.get(entry["dtype"], 0)
            packed = packed or entry["dtype"] in ("I32", "I8", "U8")
    return numel, nbytes, packed


def _checkpoint_dir(model_path: str, revision: str | None) -> Path | None:
    """The local directory holding the weights: the path itself, or the Hub cache snapshot the engine used."""
    path = Path(model_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_path, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached locally: sizes stay unknown
        return None


def checkpoint_sizes(model_path: str, revision: str | None) -> tuple[int, int, bool] | None:
    """(elements, bytes, packed integer weights?) of a safetensors checkpoint, for engines that hide their weights."""
    directory = _checkpoint_dir(model_path, revision)
    return _safetensors_sizes(directory) if directory is not None else None


def engine_pids() -> list[int]:
    """This process and its descendants (where engines run their cores and workers)."""
    import psutil

    me = psutil.Process()
    return [me.pid, *(child.pid for child in me.children(recursive=True))]


def peak_rss(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of one process, None when /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def process_tree_gpu_bytes_by_device() -> dict[int, int]:
    """GPU memory NVML attributes to this process and its descendants, per NVML device index."""
    import pynvml

    pynvml.nvmlInit()
    try:
        pids = set(engine_pids())
        out: dict[int, int] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except pynvml.NVMLError:
                # A GPU this job may not open (a device cgroup) cannot hold its memory either.
                continue
            for proc in procs:
                if proc.pid in pids and proc.usedGpuMemory:
                    out[index] = out.get(index, 0) + int(proc.usedGpuMemory)
        return out
    finally:
        pynvml.nvmlShutdown()


class MemoryReport:
    """Builds the `memory_stats()` dict: each figure has a method, or is null with a reason."""

    def __init__(self) -> None:
        self._values: dict[str, int | None] = dict.fromkeys(MEMORY_FIELDS)
        self._methods: dict[str, str] = {}
        self._unavailable: dict[str, str] = {}

    def set(self, name: str, value: int | None, method: str, missing: str | None = None) -> None:
        """Record `value` measured by `method`; when it is None, record `missing` as the reason instead."""
        if name not in self._values:
            raise KeyError(f"unknown memory figure {name!r}; expected one of {MEMORY_FIELDS}")
        if value is None:
            if not missing:
                raise ValueError(f"memory figure {name!r} is null without a reason")
            self.unavailable(name, missing)
            return
        self._values[name] = int(value)
        self._methods[name] = method
        self._unavailable.pop(name, None)

    def unavailable(self, name: str, reason: str) -> None:
        if name not in self._values:
            raise KeyError(f"unknown memory figure {name!r}; expected one of {MEMORY_FIELDS}")
        self._values[name] = None
        self._methods.pop(name, None)
        self._unavailable[name] = reason

    def as_dict(self) -> dict[str, Any]:
        unavailable = dict(self._unavailable)
        for name, value in self._values.items():
            if value is None:
                unavailable.setdefault(name, "not reported by this backend")
        return {**self._values, "methods": dict(self._methods), "unavailable": unavailable}


def report_pooled_engine(
    report: MemoryReport,
    *,
    engine: str,
    weights: int | None,
    weights_missing: str,
    pool_bytes: int | None,
    pool_method: str,
    pool_missing: str,
    kv_window: dict[str, Any],
    kv_method: str,
) -> None:
    """The figures of an engine that keeps its weights and a KV cache pool out of this process (vLLM, TensorRT-LLM).

    Weights come from the checkpoint headers, the pool from the engine's block count; the engine does not
    report its activation memory, so the allocator peak stays null with that reason.
    """
    report.set(
        "weights_bytes", weights, "safetensors checkpoint headers: parameter count x bytes of the run precision",
        weights_missing,
    )  # fmt: skip
    report.set(
        "reserved_bytes",
        None if weights is None or pool_bytes is None else weights + pool_bytes,
        f"weights + {pool_method}",
        "the size of the weights is unknown (see weights_bytes)" if weights is None else pool_missing,
    )
    report.unavailable(
        "peak_allocated_bytes",
        f"{engine} does not report the activation memory of its forward passes, so weights + activations + KV "
        "cache in use cannot be summed; the KV cache in use at its peak is memory.kv_cache_peak_bytes",
    )
    report.set(
        "kv_cache_peak_bytes",
        kv_window.get("peak_bytes"),
        kv_method,
        kv_window.get("unavailable_reason") or "KV cache use not reported",
    )


def _clear_peak_rss(pid: int) -> bool:
    """Reset one process's peak RSS (VmHWM) to its current RSS (Linux `clear_refs` 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class HostPeakRss:
    """Peak resident memory of a set of processes over a window (by default this one and its descendants).

    Linux keeps a high-water mark per process; `start()` resets it to the current RSS in every
    process, so `read()` covers the window only. Processes started during the window count from
    their start. With several processes the figure is the sum of their peaks: an upper bound of the
    simultaneous peak, and pages they share count once per process.
    """

    def __init__(
        self, pids: Callable[[], Iterable[int]] = engine_pids, scope: str = "this process and its descendants"
    ) -> None:
        self._pids = pids
        self._scoped = False
        self._why = "no measurement window was started (reset_peak_memory not called)"
        self.method = (
            f"peak resident set size (VmHWM) of {scope} since the window started (reset through "
            "/proc/<pid>/clear_refs), summed over processes; shared pages count once per process"
        )

    def start(self) -> None:
        failed = [pid for pid in self._pids() if not _clear_peak_rss(pid)]
        self._scoped = not failed
        if failed:
            self._why = f"the peak RSS of processes {failed} could not be reset (no writable /proc/<pid>/clear_refs)"

    def read(self) -> tuple[int | None, str]:
        """(bytes, reason when None)."""
        if not self._scoped:
            return None, self._why
        peaks = [p for p in (peak_rss(pid) for pid in self._pids()) if p is not None]
        if not peaks:
            return None, "no /proc/<pid>/status to read the peak RSS from"
        return sum(peaks), ""

    def report(self, report: MemoryReport) -> None:
        value, why = self.read()
        report.set("host_peak_rss_bytes", value, self.method, why)


class KvCachePeak:
    """The most KV cache blocks held by running requests at once during a window, from per-step engine stats."""

    def __init__(self) -> None:
        self.peak_blocks: int | None = None
        self.samples = 0

    def reset(self) -> None:
        self.peak_blocks, self.samples = None, 0

    def observe(self, used_blocks: int) -> None:
        self.samples += 1
        self.peak_blocks = used_blocks if self.peak_blocks is None else max(self.peak_blocks, used_blocks)

    def summary(self, total_blocks: int | None, block_bytes: int | None, method: str) -> dict[str, Any]:
        """For the engine settings: blocks and bytes at the peak, or why they are unknown."""
        peak_bytes = None if self.peak_blocks is None or block_bytes is None else self.peak_blocks * block_bytes
        why = None
        if self.peak_blocks is None:
            why = "the engine reported no per-step KV cache statistics during the window"
        elif block_bytes is None:
            why = "the size of one KV cache block is unknown for this attention layout"
        return {
            "peak_blocks_in_use": self.peak_blocks,
            "total_blocks": total_blocks,
            "peak_bytes": peak_bytes,
            "steps_observed": self.samples,
            "method": method,
            "unavailable_reason": why,
        }
