"""How a TensorRT experiment becomes `trtllm-serve`'s command line and options file (no server is started)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llem.backends.tensorrt.serve import (
    OPTIONS_FILE,
    SERVE_MODULE,
    TrtllmServeError,
    server_options,
    trtllm_server_argv,
)
from llem.config import ConfigError, ExperimentConfig

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # a Hub id: passed through as given, nothing is downloaded


def _experiment(backend: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
                **overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": {"name": MODEL, **(model or {})},
        "fp_precision": "bfloat16",
        "max_input_tokens": 32,
        "max_output_tokens": 8,
        "backend": {"name": "tensorrt", **(backend or {})},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def _flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} given {argv.count(name)} times in {argv}"
    return argv[argv.index(name) + 1]


def _options(argv: list[str]) -> dict[str, Any]:
    return yaml.safe_load(Path(_flag(argv, "--extra_llm_api_options")).read_text(encoding="utf-8"))


def test_defaults_give_the_offline_engine_settings(tmp_path: Path) -> None:
    argv = trtllm_server_argv(_experiment(), 8123, options_dir=tmp_path)
    assert argv[:4] == [sys.executable, "-m", SERVE_MODULE, MODEL]
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "8123"
    assert _flag(argv, "--backend") == "tensorrt"
    assert _flag(argv, "--max_batch_size") == "8"
    assert _flag(argv, "--tp_size") == "1" and _flag(argv, "--pp_size") == "1"
    assert float(_flag(argv, "--kv_cache_free_gpu_memory_fraction")) == 0.9
    # Unset limits are left to the engine; flags that are not set are absent.
    for absent in ("--max_num_tokens", "--max_seq_len", "--trust_remote_code", "--served_model_name", "--revision"):
        assert absent not in argv
    assert Path(_flag(argv, "--extra_llm_api_options")) == tmp_path / OPTIONS_FILE
    assert _options(argv) == {
        "dtype": "bfloat16",
        "build_config": {"max_batch_size": 8},
        "kv_cache_config": {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": False},
        "scheduler_config": {"capacity_scheduler_policy": "GUARANTEED_NO_EVICT", "dynamic_batch_config": None},
    }
    assert all(isinstance(a, str) for a in argv)
    assert list(tmp_path.iterdir()) == [tmp_path / OPTIONS_FILE], "no temp file left beside the options"


def test_every_setting_reaches_its_flag_or_the_options_file(tmp_path: Path) -> None:
    exp = _experiment(
        {
            "max_batch_size": 32, "max_num_tokens": 4096, "max_input_len": 1024, "max_seq_len": 2048,
            "tp_size": 2, "pp_size": 2, "quantization": "fp8", "kv_cache_dtype": "fp8",
            "kv_cache_free_gpu_memory_fraction": 0.55, "enable_chunked_context": True,
            "build_args": {"opt_num_tokens": 64, "max_beam_width": 1},
        },
        model={"revision": "abc123", "trust_remote_code": True},
        fp_precision="float16",
    )
    argv = trtllm_server_argv(exp, 9000, options_dir=tmp_path / "job", host="0.0.0.0", python="/venv/bin/python")
    assert argv[0] == "/venv/bin/python" and _flag(argv, "--host") == "0.0.0.0"
    assert _flag(argv, "--max_batch_size") == "32"
    assert _flag(argv, "--max_num_tokens") == "4096"
    assert _flag(argv, "--max_seq_len") == "2048"
    assert _flag(argv, "--tp_size") == "2" and _flag(argv, "--pp_size") == "2"
    assert float(_flag(argv, "--kv_cache_free_gpu_memory_fraction")) == 0.55
    assert "--trust_remote_code" in argv
    options = _options(argv)
    assert options["dtype"] == "float16"
    # The file's build_config replaces the one the flags build, so it repeats the limits.
    assert options["build_config"] == {"max_batch_size": 32, "max_num_tokens": 4096, "max_input_len": 1024,
                                       "max_seq_len": 2048, "opt_num_tokens": 64, "max_beam_width": 1}
    assert options["kv_cache_config"] == {"free_gpu_memory_fraction": 0.55, "enable_block_reuse": False}
    assert options["quant_config"] == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    assert options["enable_chunked_prefill"] is True
    assert options["revision"] == "abc123"


@pytest.mark.parametrize(("quantization", "kv_cache_dtype", "expected"), [
    ("int4_awq", "auto", {"quant_algo": "W4A16_AWQ"}),
    ("int8_sq", "int8", {"quant_algo": "W8A8_SQ_PER_CHANNEL", "kv_cache_quant_algo": "INT8"}),
    (None, "fp8", {"kv_cache_quant_algo": "FP8"}),
    (None, "auto", None),
])
def test_quantisation_names_become_tensorrt_llm_algorithms(quantization: str | None, kv_cache_dtype: str,
                                                            expected: dict[str, str] | None) -> None:
    options = server_options(_experiment({"quantization": quantization, "kv_cache_dtype": kv_cache_dtype}))
    assert options.get("quant_config") == expected


def test_a_builtin_model_is_served_from_its_local_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llem.models.resolve as resolve

    monkeypatch.setitem(resolve.BUILTIN_MODELS, "tiny", lambda: tmp_path / "tiny-model")
    argv = trtllm_server_argv(_experiment(model={"name": "builtin:tiny"}), 8000, options_dir=tmp_path)
    assert argv[3] == str(tmp_path / "tiny-model")


def test_served_name_is_not_put_on_the_command_line(tmp_path: Path) -> None:
    plain = trtllm_server_argv(_experiment(), 8000, options_dir=tmp_path)
    named = trtllm_server_argv(_experiment(), 8000, options_dir=tmp_path, served_name="my-model")
    assert named == plain and "my-model" not in named


def test_rewriting_the_options_replaces_the_file(tmp_path: Path) -> None:
    trtllm_server_argv(_experiment({"max_batch_size": 4}), 8000, options_dir=tmp_path)
    argv = trtllm_server_argv(_experiment({"max_batch_size": 16}), 8000, options_dir=tmp_path)
    assert _options(argv)["build_config"] == {"max_batch_size": 16}


@pytest.mark.parametrize("key", ["max_batch_size", "max_seq_len"])
def test_build_args_may_not_set_a_named_limit_again(tmp_path: Path, key: str) -> None:
    exp = _experiment({"build_args": {key: 64, "opt_num_tokens": 8}})
    with pytest.raises(TrtllmServeError, match=rf"'{key}' is set by backend\.{key}, not build_args") as err:
        trtllm_server_argv(exp, 8000, options_dir=tmp_path)
    assert isinstance(err.value, ConfigError) and err.value.problems == [f"backend.build_args.{key}: use backend.{key}"]
    assert not (tmp_path / OPTIONS_FILE).exists(), "nothing written for a refused experiment"


def test_a_build_arg_yaml_cannot_hold_is_refused(tmp_path: Path) -> None:
    exp = _experiment({"build_args": {"opt_num_tokens": 8}})
    exp.backend.build_args["strange"] = object()  # type: ignore[union-attr]
    with pytest.raises(TrtllmServeError, match=r"backend\.build_args: a value cannot be written for trtllm-serve"):
        trtllm_server_argv(exp, 8000, options_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_another_backend_is_refused(tmp_path: Path) -> None:
    exp = ExperimentConfig.model_validate({"model": {"name": MODEL}, "backend": {"name": "vllm"}})
    with pytest.raises(TrtllmServeError, match=r"trtllm-serve serves backend=tensorrt experiments, not backend=vllm"):
        trtllm_server_argv(exp, 8000, options_dir=tmp_path)


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_a_port_outside_the_tcp_range_is_refused(tmp_path: Path, port: int) -> None:
    with pytest.raises(ValueError, match=r"port must be 1-65535"):
        trtllm_server_argv(_experiment(), port, options_dir=tmp_path)
