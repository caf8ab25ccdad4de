"""Every backend's memory_stats() has one shape with one meaning per figure; a null figure always says why."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from llem.backends.base import Backend
from llem.backends.pytorch.backend import PyTorchBackend
from llem.backends.resources import MEMORY_FIELDS, HostPeakRss, MemoryReport, peak_rss
from llem.backends.tensorrt.backend import TensorRTBackend, kv_bytes_per_token, kv_cache_block_stats
from llem.config import ExperimentConfig
from llem.measure.session import BackendSession
from llem.models.tiny import TINY_SPEC, ensure_tiny_model
from llem.prompts.load import load_prompts
from tests.backends._vllm import VLLM_CPU_BACKEND, needs_vllm

_MiB = 1024**2


def _assert_shape(stats: dict[str, Any]) -> None:
    assert set(stats) == {*MEMORY_FIELDS, "methods", "unavailable"}
    for name in MEMORY_FIELDS:
        if stats[name] is None:
            assert stats["unavailable"].get(name), f"{name} is null without a reason"
            assert name not in stats["methods"]
        else:
            assert isinstance(stats[name], int) and stats[name] > 0, name
            assert stats["methods"].get(name), f"{name} has no method"
            assert name not in stats["unavailable"]


def _experiment(backend: dict[str, Any], **overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": {"name": "builtin:tiny"},
        "num_input_prompts": 4,
        "max_input_tokens": 32,
        "max_output_tokens": 6,
        "backend": backend,
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def test_report_requires_a_reason_for_every_null() -> None:
    report = MemoryReport()
    report.set("weights_bytes", 10, "counted")
    report.set("reserved_bytes", None, "counted", "no pool here")
    with pytest.raises(ValueError, match="without a reason"):
        report.set("peak_allocated_bytes", None, "counted")
    with pytest.raises(KeyError):
        report.set("peak_bytes", 1, "old name")
    stats = report.as_dict()
    _assert_shape(stats)
    assert stats["weights_bytes"] == 10 and stats["methods"] == {"weights_bytes": "counted"}
    assert stats["unavailable"]["reserved_bytes"] == "no pool here"
    assert stats["unavailable"]["host_peak_rss_bytes"] == "not reported by this backend"


def test_base_backend_reports_every_figure_null_with_a_reason() -> None:
    class Silent(Backend):
        name = "silent"
        load_key = load = tokenizer = generate = unload = None  # type: ignore[assignment]

    stats = Silent().memory_stats()
    _assert_shape(stats)
    assert all(stats[name] is None for name in MEMORY_FIELDS)


def test_host_peak_rss_covers_the_window_only() -> None:
    me = HostPeakRss(lambda: [os.getpid()])
    assert me.read() == (None, "no measurement window was started (reset_peak_memory not called)")
    block = bytearray(256 * _MiB)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page, so it is resident
    before = peak_rss(os.getpid())
    del block
    me.start()
    value, why = me.read()
    assert value is not None, why
    assert before is not None and value < before - 128 * _MiB  # the freed 256 MiB peak is not in this window


def test_pytorch_cpu_reports_parameter_bytes_and_says_why_the_rest_is_null() -> None:
    experiment = _experiment({"name": "pytorch", "batch_size": 4, "device": "cpu"})
    backend = PyTorchBackend()
    try:
        backend.load(experiment)
        prompts = load_prompts(experiment.dataset, backend.tokenizer, n=4, max_input_tokens=32, seed=0)
        backend.reset_peak_memory()
        backend.generate(prompts, experiment)
        stats = backend.memory_stats()
        parameter_bytes = sum(p.numel() * p.element_size() for p in backend._model.parameters())
    finally:
        backend.unload()
    _assert_shape(stats)
    assert stats["weights_bytes"] == parameter_bytes
    assert stats["peak_allocated_bytes"] is None and "CPU allocator" in stats["unavailable"]["peak_allocated_bytes"]
    assert stats["reserved_bytes"] is None
    assert stats["host_peak_rss_bytes"] is not None and stats["host_peak_rss_bytes"] > parameter_bytes
    assert "window" in stats["methods"]["host_peak_rss_bytes"]


def test_tensorrt_kv_helpers_and_unloaded_stats() -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ensure_tiny_model())
    per_token = kv_bytes_per_token(config, 2)
    spec = TINY_SPEC
    assert per_token == 2 * spec["num_hidden_layers"] * spec["num_key_value_heads"] * spec["head_dim"] * 2
    stats = [
        {"iter": 1, "kvCacheStats": {"usedNumBlocks": 3, "maxNumBlocks": 100, "tokensPerBlock": 32}},
        json.dumps({"iter": 2, "kvCacheStats": {"usedNumBlocks": 7, "maxNumBlocks": 100, "tokensPerBlock": 32}}),
        {"iter": 3},
    ]
    assert kv_cache_block_stats(stats) == ([3, 7], 100, 32)
    assert kv_cache_block_stats([]) == ([], None, None)

    unloaded = TensorRTBackend().memory_stats()
    _assert_shape(unloaded)
    assert unloaded["weights_bytes"] is None and unloaded["unavailable"]["weights_bytes"] == "model not loaded"


def _checkpoint_bytes(directory: Path) -> int:
    """Bytes of every tensor in the safetensors files, read through the safetensors library."""
    from safetensors import safe_open

    total = 0
    for file in directory.glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                total += tensor.numel() * tensor.element_size()
    return total


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_cpu_memory(vllm_session: BackendSession) -> None:
    experiment = _experiment(VLLM_CPU_BACKEND)
    backend, _, _ = vllm_session.acquire(experiment)
    prompts = load_prompts(experiment.dataset, backend.tokenizer, n=4, max_input_tokens=32, seed=0)

    backend.reset_peak_memory()
    idle = backend.memory_stats()
    idle_kv = backend.effective_settings()["kv_cache_usage"]
    backend.reset_peak_memory()
    backend.generate(prompts, experiment)
    stats = backend.memory_stats()
    settings = backend.effective_settings()

    _assert_shape(stats)
    _assert_shape(idle)
    assert stats["weights_bytes"] == _checkpoint_bytes(ensure_tiny_model())  # float32 checkpoint, float32 run
    assert stats["reserved_bytes"] == stats["weights_bytes"] + settings["kv_cache_bytes"]
    assert stats["reserved_bytes"] > stats["weights_bytes"]
    peak = stats["peak_allocated_bytes"]
    assert (peak is None and stats["unavailable"]["peak_allocated_bytes"]) or (
        stats["weights_bytes"] <= peak <= stats["reserved_bytes"]
    )
    assert stats["host_peak_rss_bytes"] is not None and stats["host_peak_rss_bytes"] > stats["weights_bytes"]

    kv = settings["kv_cache_usage"]
    assert idle_kv["peak_blocks_in_use"] is None and idle_kv["unavailable_reason"]  # no step ran in that window
    assert kv["steps_observed"] >= experiment.max_output_tokens
    assert 0 < kv["peak_blocks_in_use"] <= kv["total_blocks"] == settings["num_gpu_blocks"]
    # every prompt holds at least one block at once (all 4 are scheduled together, max_num_seqs=4)
    assert kv["peak_blocks_in_use"] >= len(prompts)
    assert 0 < kv["peak_bytes"] <= settings["kv_cache_bytes"]


def test_gpu_bytes_by_device_skips_a_gpu_the_job_may_not_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a device cgroup NVML counts GPUs it will not open; the job's own GPU is still read."""
    import sys

    from llem.backends import resources
    from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, NVMLError_NoPermission

    me = os.getpid()
    nv = FakeNvml(
        [
            FakeGpu(errors={"nvmlDeviceGetHandleByIndex": NVMLError_NoPermission}, processes=[(me, 7 * _MiB)]),
            FakeGpu(processes=[(me, 3 * _MiB), (me + 10**6, 5 * _MiB)]),
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.setattr(resources, "engine_pids", lambda: [me])
    assert resources.process_tree_gpu_bytes_by_device() == {1: 3 * _MiB}
