"""The same forced-length workload through PyTorch and vLLM on CPU: same tokens in, same tokens out, same schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llem.config import ExperimentConfig
from llem.measure.harness import run_experiment
from llem.measure.result import ExperimentResult
from llem.measure.session import BackendSession
from tests.backends._vllm import VLLM_CPU_BACKEND, needs_vllm

pytestmark = [pytest.mark.vllm, pytest.mark.slow, needs_vllm]

# Subtrees that describe the engine itself, so their keys legitimately differ between backends.
ENGINE_SPECIFIC = {
    ("engine_settings",), ("config", "backend"), ("environment", "versions"), ("memory", "methods"), ("memory", "unavailable"),
}


def _experiment(backend: dict[str, Any]) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "builtin:tiny"},
            "dataset": {"source": "builtin", "name": "mixed"},
            "num_input_prompts": 4,
            "max_input_tokens": 32,
            "max_output_tokens": 6,
            "force_output_length": True,
            "warmup": {"num_prompts": 1},
            "baseline": {"duration_seconds": 0.3},
            "backend": backend,
        }
    )


def _key_paths(value: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if prefix in ENGINE_SPECIFIC or not isinstance(value, dict):
        return set()
    paths: set[tuple[str, ...]] = set()
    for key, child in value.items():
        path = (*prefix, key)
        paths.add(path)
        paths |= _key_paths(child, path)
    return paths


def _run(backend: dict[str, Any], out: Path, session: BackendSession) -> tuple[ExperimentResult, dict[str, Any]]:
    run_experiment(_experiment(backend), out, session)
    raw = (out / "result.json").read_text(encoding="utf-8")
    return ExperimentResult.model_validate_json(raw), json.loads(raw)


def test_pytorch_and_vllm_measure_the_same_work_with_the_same_schema(
    tmp_path: Path, vllm_session: BackendSession
) -> None:
    torch_session = BackendSession()
    try:
        torch_result, torch_raw = _run({"name": "pytorch", "batch_size": 4}, tmp_path / "pytorch", torch_session)
    finally:
        torch_session.release()
    vllm_result, vllm_raw = _run(VLLM_CPU_BACKEND, tmp_path / "vllm", vllm_session)  # left loaded for test_vllm_cpu

    assert _key_paths(torch_raw) == _key_paths(vllm_raw)
    assert torch_result.input_tokens == vllm_result.input_tokens > 0
    assert torch_result.output_tokens == vllm_result.output_tokens == 4 * 6
    assert torch_result.flops.total == pytest.approx(vllm_result.flops.total)  # same parameters and architecture
    for result in (torch_result, vllm_result):
        assert result.throughput_tokens_per_s and result.throughput_tokens_per_s > 0
        assert result.latency.ttft_ms.p50 and result.latency.ttft_ms.p50 > 0
        assert result.latency.itl_ms.p50 and result.latency.itl_ms.p50 > 0
        assert result.latency.itl_ms.count == 4 * 5
        # one clock: every prompt arrives at the window start; both engines say when they took it up
        assert result.latency.queue_ms.count == result.latency.prefill_ms.count == 4
        assert result.latency.e2e_ms.p50 >= result.latency.ttft_ms.p50 >= result.latency.prefill_ms.p50  # type: ignore[operator]
        assert result.passes == 1 and result.prefill is not None and result.decode is not None
        assert result.prefill.tokens == result.input_tokens and result.decode.tokens == 4 * 5
        # weights alike; PyTorch also counts buffers (rotary inv_freq), vLLM the checkpoint's tensors
        assert result.memory.weights_bytes == pytest.approx(torch_result.memory.weights_bytes, rel=1e-3)
        assert result.memory.comparable == "weights_kv_peak_bytes" and result.memory.kv_cache_peak_bytes
    # the KV cache held at peak, from each engine's own accounting: PyTorch holds every row at the padded width
    # plus the generated tokens but the last; vLLM holds whole blocks per sequence
    arch = torch_result.engine_settings["architecture"]
    per_token = 2 * arch["num_layers"] * arch["num_kv_heads"] * arch["head_dim"] * 4  # float32 keys and values
    kv_torch, kv_vllm = torch_result.memory.kv_cache_peak_bytes, vllm_result.memory.kv_cache_peak_bytes
    assert kv_torch and kv_torch % (4 * per_token) == 0
    width = kv_torch // (4 * per_token) - 5
    assert 0 < width <= 32  # the longest prompt of the batch
    block = vllm_result.engine_settings["block_size"] * per_token
    assert kv_vllm and kv_vllm % block == 0
    assert 4 <= kv_vllm // block <= 4 * -(-(32 + 5) // vllm_result.engine_settings["block_size"])
    assert torch_result.engine_settings["stop_token_ids"] == vllm_result.engine_settings["stop_token_ids"]
