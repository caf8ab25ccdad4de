"""TensorRT-LLM without a GPU: a clear refusal, no import at module load, and the engine-cache key rules."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llem.backends.errors import HardwareUnsupported
from llem.backends.registry import backend_class
from llem.backends.tensorrt.backend import (
    RUNTIME_FIELDS,
    BuildArgsError,
    TensorRTBackend,
    _has_nvidia_gpu,
    check_build_args,
    engine_cache_key,
    engine_cache_root,
    sampling_kwargs,
)
from llem.config import ExperimentConfig, TensorRTConfig

REPO = Path(__file__).resolve().parents[2]
CAN_RUN_TRT = importlib.util.find_spec("tensorrt_llm") is not None and _has_nvidia_gpu()


def _experiment(backend: dict[str, Any] | None = None, **overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": {"name": "builtin:tiny"},
        "fp_precision": "float16",
        "max_input_tokens": 32,
        "max_output_tokens": 8,
        "backend": {"name": "tensorrt", **(backend or {})},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


@pytest.mark.skipif(CAN_RUN_TRT, reason="this machine can run TensorRT-LLM")
def test_load_without_gpu_or_package_is_refused_clearly() -> None:
    backend = backend_class("tensorrt")()
    assert isinstance(backend, TensorRTBackend)
    with pytest.raises(HardwareUnsupported, match=r"TensorRT-LLM needs an NVIDIA GPU and `pip install llem\[tensorrt\]`"):
        backend.load(_experiment())


def test_importing_the_backend_does_not_import_tensorrt_llm() -> None:
    code = "import sys, llem.backends.tensorrt.backend; assert 'tensorrt_llm' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=120)


BUILD_CHANGES: dict[str, Any] = {
    "max_batch_size": 16,
    "max_num_tokens": 4096,
    "max_input_len": 256,
    "max_seq_len": 512,
    "tp_size": 2,
    "pp_size": 2,
    "quantization": "fp8",
    "kv_cache_dtype": "fp8",
    "enable_chunked_context": True,
    "build_args": {"opt_num_tokens": 64},
}


def test_engine_cache_key_changes_with_every_build_setting() -> None:
    assert set(BUILD_CHANGES) == set(TensorRTConfig.model_fields) - RUNTIME_FIELDS, "cover every build setting"
    key = engine_cache_key(_experiment(), "1.0.0")
    assert len(key) == 16 and engine_cache_key(_experiment(), "1.0.0") == key
    for field, value in BUILD_CHANGES.items():
        assert engine_cache_key(_experiment({field: value}), "1.0.0") != key, field
    assert engine_cache_key(_experiment(), "1.1.0") != key
    assert engine_cache_key(_experiment(), "1.0.0", "NVIDIA H100 80GB HBM3") != key  # engines are per GPU type
    assert engine_cache_key(_experiment(fp_precision="bfloat16"), "1.0.0") != key
    assert engine_cache_key(_experiment(model={"name": "org/other"}), "1.0.0") != key
    assert engine_cache_key(_experiment(model={"name": "builtin:tiny", "revision": "v2"}), "1.0.0") != key


def test_engine_cache_key_ignores_run_time_settings() -> None:
    key = engine_cache_key(_experiment(), "1.0.0")
    for backend in ({"kv_cache_free_gpu_memory_fraction": 0.5}, {"engine_cache_dir": "/elsewhere"}):
        assert engine_cache_key(_experiment(backend), "1.0.0") == key, backend
    for other in ({"num_input_prompts": 3}, {"max_output_tokens": 4}, {"random_seed": 1},
                  {"decoder": {"do_sample": True}}, {"force_output_length": False}, {"warmup": {"num_prompts": 0}}):
        assert engine_cache_key(_experiment(**other), "1.0.0") == key, other


def test_load_key_needs_a_new_llm_for_any_backend_setting() -> None:
    key = TensorRTBackend.load_key(_experiment())
    assert TensorRTBackend.load_key(_experiment({"kv_cache_free_gpu_memory_fraction": 0.5})) != key
    assert TensorRTBackend.load_key(_experiment({"max_batch_size": 4})) != key
    assert TensorRTBackend.load_key(_experiment(num_input_prompts=3)) == key


def test_engine_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tmp_path))
    assert engine_cache_root(TensorRTConfig()) == tmp_path / "trt-engines"
    assert engine_cache_root(TensorRTConfig(engine_cache_dir=str(tmp_path / "x"))) == tmp_path / "x"
    monkeypatch.delenv("LLEM_CACHE_DIR")
    assert engine_cache_root(TensorRTConfig()) == Path.home() / ".cache" / "llem" / "trt-engines"


def test_build_args_are_checked_against_build_config_fields() -> None:
    check_build_args({"opt_num_tokens": 1}, frozenset({"opt_num_tokens", "max_beam_width"}))
    with pytest.raises(BuildArgsError, match=r"no 'max_beam_widht' \(did you mean 'max_beam_width'\?\)"):
        check_build_args({"max_beam_widht": 2}, frozenset({"opt_num_tokens", "max_beam_width"}))


def test_sampling_kwargs() -> None:
    assert sampling_kwargs(_experiment()) == {
        "n": 1, "max_tokens": 8, "repetition_penalty": 1.0, "min_tokens": 8, "ignore_eos": True, "top_k": 1
    }
    sampled = sampling_kwargs(_experiment(force_output_length=False, decoder={"do_sample": True, "top_p": 0.8}))
    assert sampled["top_p"] == 0.8 and sampled["seed"] == 42 and "min_tokens" not in sampled


def test_sampling_kwargs_keep_the_stop_token_in_the_output() -> None:
    free = sampling_kwargs(_experiment(force_output_length=False), stop_token_ids=[2, 9])
    assert free["stop_token_ids"] == [2, 9] and free["include_stop_str_in_output"] is True  # counted, as elsewhere
    forced = sampling_kwargs(_experiment(), stop_token_ids=[2, 9])
    assert "stop_token_ids" not in forced and "include_stop_str_in_output" not in forced
