"""Every ExperimentConfig validator, including the text of its error messages."""

from __future__ import annotations

from typing import Any

import pytest

from llem.config import ConfigError, ExperimentConfig, PyTorchConfig, TensorRTConfig, VLLMConfig, validate_or_raise


def _exp(**kw: Any) -> dict[str, Any]:
    return {"model": {"name": "builtin:tiny"}, **kw}


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_or_raise(ExperimentConfig, data, context="experiment")
    return info.value.problems


def test_defaults_are_valid() -> None:
    cfg = ExperimentConfig.model_validate(_exp())
    assert cfg.backend == PyTorchConfig()
    assert cfg.fp_precision == "float32"
    assert cfg.dataset.source == "builtin"


def test_precision_names_allowed_values() -> None:
    (p,) = _problems(_exp(fp_precision="float64"))
    assert p.startswith("fp_precision:")
    assert "'float32', 'float16' or 'bfloat16'" in p and "float64" in p


@pytest.mark.parametrize(
    ("section", "key"),
    [(None, "batchsize"), ("decoder", "temprature"), ("warmup", "n"), ("energy", "sourc"), ("model", "nme")],
)
def test_unknown_keys_are_errors_naming_the_key(section: str | None, key: str) -> None:
    data = _exp()
    if section is None:
        data[key] = 1
        where = key
    else:
        data.setdefault(section, {})[key] = 1
        where = f"{section}.{key}"
    (p,) = _problems(data)
    assert p.startswith(f"{where}: unknown key")


def test_misspelt_key_suggests_the_right_one() -> None:
    (p,) = _problems(_exp(backend={"name": "pytorch", "batchsize": 2}))
    assert p == "backend.batchsize: unknown key for backend 'pytorch'; did you mean 'batch_size'?"


def test_key_of_another_backend_names_its_owner() -> None:
    (p,) = _problems(_exp(backend={"name": "vllm", "batch_size": 2}))
    assert p.startswith("backend.batch_size: unknown key for backend 'vllm' (it is a parameter of pytorch)")


def test_unknown_backend_lists_choices() -> None:
    (p,) = _problems(_exp(backend={"name": "onnx"}))
    assert p == "backend.name: unknown choice 'onnx'; expected one of 'pytorch', 'vllm', 'tensorrt'"


def test_unknown_dataset_source_lists_choices() -> None:
    (p,) = _problems(_exp(dataset={"source": "web"}))
    assert p.startswith("dataset.source: unknown choice 'web'")


def test_range_errors_name_field_and_value() -> None:
    (p,) = _problems(_exp(backend={"name": "vllm", "max_num_seqs": 0}))
    assert p == "backend.max_num_seqs: Input should be greater than or equal to 1 (got 0)"
    (p,) = _problems(_exp(backend={"name": "vllm", "gpu_memory_utilization": 1.5}))
    assert p.startswith("backend.gpu_memory_utilization: Input should be less than or equal to 1")


def test_several_problems_reported_together() -> None:
    problems = _problems(_exp(fp_precision="x", num_input_prompts=0, decoder={"top_p": 0}))
    assert len(problems) == 3
    assert {p.split(":")[0] for p in problems} == {"fp_precision", "num_input_prompts", "decoder.top_p"}


def test_message_header_counts_problems() -> None:
    with pytest.raises(ConfigError) as info:
        validate_or_raise(ExperimentConfig, _exp(fp_precision="x", max_output_tokens=0), context="job 3")
    assert str(info.value).splitlines()[0] == "Invalid job 3 (2 problems):"


def test_missing_model_is_required() -> None:
    with pytest.raises(ConfigError) as info:
        validate_or_raise(ExperimentConfig, {}, context="experiment")
    assert info.value.problems == ["model: required field is missing"]


def test_tensorrt_rejects_float32() -> None:
    (p,) = _problems(_exp(backend={"name": "tensorrt"}, fp_precision="float32"))
    assert "TensorRT-LLM does not run float32" in p
    ExperimentConfig.model_validate(_exp(backend={"name": "tensorrt"}, fp_precision="bfloat16"))


def test_4bit_and_8bit_exclude_each_other() -> None:
    (p,) = _problems(_exp(backend={"name": "pytorch", "load_in_4bit": True, "load_in_8bit": True}, fp_precision="float16"))
    assert p == "backend: load_in_4bit and load_in_8bit exclude each other: choose one"


def test_quantised_loading_needs_half_precision() -> None:
    (p,) = _problems(_exp(backend={"name": "pytorch", "load_in_8bit": True}, fp_precision="float32"))
    assert "4/8-bit loading" in p


def test_vllm_batched_tokens_cover_seqs() -> None:
    (p,) = _problems(_exp(backend={"name": "vllm", "max_num_seqs": 64, "max_num_batched_tokens": 32}))
    assert "max_num_batched_tokens (32) must be >= max_num_seqs (64)" in p


def test_vllm_engine_args_may_not_repeat_named_fields() -> None:
    (p,) = _problems(_exp(backend={"name": "vllm", "engine_args": {"max_num_seqs": 4, "dtype": "half"}}))
    assert "engine_args repeats named parameters ['max_num_seqs']" in p


def test_vllm_context_must_fit_workload() -> None:
    (p,) = _problems(_exp(backend={"name": "vllm", "max_model_len": 100}, max_input_tokens=90, max_output_tokens=20))
    assert "max_model_len (100) is shorter than max_input_tokens + max_output_tokens (110)" in p


def test_tensorrt_build_limits_must_fit_workload() -> None:
    base = {"name": "tensorrt", "max_seq_len": 100}
    (p,) = _problems(_exp(backend=base, fp_precision="float16", max_input_tokens=90, max_output_tokens=20))
    assert "max_seq_len (100)" in p
    (p,) = _problems(
        _exp(backend={"name": "tensorrt", "max_input_len": 50}, fp_precision="float16", max_input_tokens=90)
    )
    assert "max_input_len (50)" in p


def test_backend_sections_are_discriminated() -> None:
    cfg = ExperimentConfig.model_validate(_exp(backend={"name": "vllm", "max_num_seqs": 8}))
    assert isinstance(cfg.backend, VLLMConfig) and cfg.backend.max_num_seqs == 8
    cfg = ExperimentConfig.model_validate(_exp(backend={"name": "tensorrt"}, fp_precision="float16"))
    assert isinstance(cfg.backend, TensorRTConfig)


def test_dataset_sources() -> None:
    cfg = ExperimentConfig.model_validate(_exp(dataset={"source": "synthetic", "input_tokens": 32}))
    assert cfg.dataset.input_tokens == 32  # type: ignore[union-attr]
    (p,) = _problems(_exp(dataset={"source": "file"}))
    assert p == "dataset.path: required field is missing"


def test_builtin_model_flag() -> None:
    assert ExperimentConfig.model_validate(_exp()).model.is_builtin
    assert not ExperimentConfig.model_validate({"model": {"name": "gpt2"}}).model.is_builtin


def test_assignment_is_validated() -> None:
    cfg = ExperimentConfig.model_validate(_exp())
    with pytest.raises(ValueError):
        cfg.max_output_tokens = 0
