"""What the experiment ran on: software versions, CPU, GPUs, driver, CUDA."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import llem


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    info: dict[str, Any] = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def snapshot(gpus: list[dict[str, Any]] | None = None, libraries: dict[str, str] | None = None) -> dict[str, Any]:
    """A JSON-ready description of the machine and software; `gpus` comes from the device layer."""
    torch_info = _torch_info()
    versions = {"llem": llem.__version__, **({"torch": torch_info["torch"]} if "torch" in torch_info else {})}
    versions.update(libraries or {})
    for name in ("pydantic", "hydra", "transformers", "vllm", "tensorrt_llm"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__version__", None):
            versions.setdefault(name if name != "hydra" else "hydra-core", module.__version__)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_total_bytes": _memory_total_bytes(),
        "cuda_runtime": torch_info.get("cuda_runtime"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": gpus or [],
        "driver_version": (gpus or [{}])[0].get("driver_version") if gpus else None,
        "versions": versions,
    }
