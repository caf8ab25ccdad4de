"""A real vLLM engine on CPU with the tiny model, through the harness: timings, reuse, reload, clean unload.

Each engine start costs ~20 s here, so one warm session (tests/backends/conftest.py) serves every
test: the file starts at most two engines (the second when an engine setting changes), one fewer
when the consistency test already left the same engine loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llem.backends.registry import backend_class
from llem.config import ConfigError, ExperimentConfig
from llem.measure.harness import run_experiment
from llem.measure.result import read_result
from llem.measure.session import BackendSession
from tests.backends._vllm import VLLM_CPU_BACKEND, engine_children, needs_vllm

pytestmark = [pytest.mark.vllm, pytest.mark.slow, needs_vllm]

PROMPTS, MAX_OUT = 4, 6


def _experiment(backend: dict[str, Any] | None = None, **overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": {"name": "builtin:tiny"},
        "num_input_prompts": PROMPTS,
        "max_input_tokens": 32,
        "max_output_tokens": MAX_OUT,
        "warmup": {"num_prompts": 1},
        "baseline": {"duration_seconds": 0.3},
        "backend": {**VLLM_CPU_BACKEND, **(backend or {})},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


@pytest.fixture
def session(vllm_session: BackendSession) -> BackendSession:
    return vllm_session


def test_cpu_run_writes_a_valid_result(tmp_path: Path, session: BackendSession) -> None:
    warm = session.can_reuse(_experiment())
    result = run_experiment(_experiment(), tmp_path, session)
    assert read_result(tmp_path / "result.json") == result
    assert result.backend == "vllm" and result.num_prompts == PROMPTS
    assert result.output_tokens == PROMPTS * MAX_OUT  # forced length: min_tokens + ignore_eos
    assert 0 < result.input_tokens <= PROMPTS * 32
    assert result.duration_s > 0 and result.throughput_tokens_per_s and result.throughput_tokens_per_s > 0
    for dist in (result.latency.ttft_ms, result.latency.itl_ms, result.latency.e2e_ms):
        assert dist.count > 0 and dist.p50 is not None and dist.p50 > 0
    assert result.latency.ttft_ms.count == PROMPTS
    assert result.latency.itl_ms.count == PROMPTS * (MAX_OUT - 1)
    assert result.latency.e2e_ms.p50 >= result.latency.ttft_ms.p50  # type: ignore[operator]
    assert not any("forced output length" in w for w in result.warnings)
    assert result.model_reused == warm and (warm or (result.model_load_s and result.model_load_s > 0))

    s = result.engine_settings
    assert s["device"] == "cpu" and s["dtype"] == "float32"
    assert s["max_num_seqs"] == 4 and s["max_model_len"] == 256 and s["enforce_eager"] is True
    assert s["num_gpu_blocks"] > 0 and s["kv_cache_bytes"] > 0 and s["block_size"] > 0
    arch = s["architecture"]
    assert arch["num_layers"] == 2 and arch["hidden_size"] == 128 and arch["vocab_size"] > 0 and arch["num_heads"] == 2
    cross = s["timing_cross_check"]
    assert cross["host_ttft_ms_median"] > 0 and cross["engine_first_token_latency_ms_median"] > 0
    assert result.flops.total and result.flops.total > 0
    m = result.memory
    assert m.weights_bytes and m.reserved_bytes and m.reserved_bytes > m.weights_bytes
    assert m.peak_allocated_bytes is not None or "peak_allocated_bytes" in m.unavailable
    assert result.latency.queue_ms.count == result.latency.prefill_ms.count == PROMPTS  # vLLM's SCHEDULED events
    assert result.passes == 1 and result.prefill is not None and result.prefill.tokens == result.input_tokens
    assert result.environment["versions"]["vllm"] and result.environment["versions"]["torch"]


def test_same_engine_settings_reuse_and_a_changed_one_reloads(tmp_path: Path, session: BackendSession) -> None:
    run_experiment(_experiment(), tmp_path / "warm", session)  # loads only if run on its own
    loads = session.loads
    runtime_only = _experiment(num_input_prompts=3, max_output_tokens=4, decoder={"repetition_penalty": 1.1})
    same = run_experiment(runtime_only, tmp_path / "same", session)
    assert same.model_reused and same.model_load_s is None and session.loads == loads
    assert same.output_tokens == 3 * 4 and same.latency.itl_ms.count == 3 * 3

    free = run_experiment(_experiment(force_output_length=False), tmp_path / "free", session)
    assert free.model_reused and PROMPTS <= free.output_tokens <= PROMPTS * MAX_OUT

    other = run_experiment(_experiment(backend={"max_num_seqs": 2}), tmp_path / "other", session)
    assert not other.model_reused and other.model_load_s and session.loads == loads + 1
    assert other.engine_settings["max_num_seqs"] == 2
    assert other.output_tokens == PROMPTS * MAX_OUT


def test_unload_stops_the_engine_processes(tmp_path: Path, session: BackendSession) -> None:
    if not session.can_reuse(_experiment(backend={"max_num_seqs": 2})):
        run_experiment(_experiment(backend={"max_num_seqs": 2}), tmp_path, session)
    assert engine_children(), "vLLM runs its engine core in child processes"
    session.release()
    assert engine_children() == []  # engine core and worker (and with them the KV cache) are gone


def test_unknown_engine_args_fail_before_any_engine_starts() -> None:
    backend = backend_class("vllm")()
    with pytest.raises(ConfigError, match=r"engine_args: vLLM .* has no 'max_num_seq' \(did you mean 'max_num_seqs'"):
        backend.load(_experiment(backend={"engine_args": {"max_num_seq": 3}}))
    assert engine_children() == []
