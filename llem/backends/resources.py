"""Sizes and memory that engines do not report themselves: checkpoint files, process trees.

Shared by the engine backends that run their model in other processes (vLLM, TensorRT-LLM).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

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


def process_tree_gpu_bytes() -> int | None:
    """GPU memory NVML attributes to this process and its descendants (None when NVML cannot tell)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        pids = set(engine_pids())
        used = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    used += int(proc.usedGpuMemory)
        return used or None
    except Exception:  # noqa: BLE001 - no NVML, or PIDs from another namespace
        return None


def peak_rss(pid: int) -> int | None:
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
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    out[index] = out.get(index, 0) + int(proc.usedGpuMemory)
        return out
    finally:
        pynvml.nvmlShutdown()
