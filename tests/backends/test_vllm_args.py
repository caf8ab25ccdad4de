"""Fast checks of how llem's vLLM settings become EngineArgs and SamplingParams (no engine is started)."""

from __future__ import annotations

from typing import Any

import pytest

from llem.backends.vllm.backend import (
    EngineArgsError,
    VLLMBackend,
    check_engine_args,
    engine_kwargs,
    sampling_kwargs,
)
from llem.config import ConfigError, ExperimentConfig, VLLMConfig
from tests.backends._vllm import needs_vllm

KNOWN = frozenset({"model", "tokenizer", "dtype", "seed", "max_num_seqs", "gpu_memory_utilization", "swap_space",
                   "tensor_parallel_size", "pipeline_parallel_size", "enforce_eager", "kv_cache_dtype",
                   "enable_prefix_caching", "max_model_len", "trust_remote_code", "disable_log_stats",
                   "kv_cache_memory_bytes"})


def _experiment(backend: dict[str, Any] | None = None, **overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": {"name": "builtin:tiny"},
        "max_input_tokens": 32,
        "max_output_tokens": 8,
        "backend": {"name": "vllm", **(backend or {})},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def test_engine_kwargs_pass_named_settings_and_leave_nulls_to_the_engine() -> None:
    exp = _experiment({"max_num_seqs": 3, "enable_prefix_caching": False, "engine_args": {"kv_cache_memory_bytes": 1}})
    kwargs = engine_kwargs(exp, "/models/tiny", KNOWN)
    assert kwargs["model"] == kwargs["tokenizer"] == "/models/tiny"
    assert kwargs["dtype"] == "float32" and kwargs["seed"] == exp.random_seed
    assert kwargs["max_num_seqs"] == 3 and kwargs["enable_prefix_caching"] is False
    assert kwargs["kv_cache_memory_bytes"] == 1
    for unset in ("max_num_batched_tokens", "block_size", "quantization", "enable_chunked_prefill", "swap_space"):
        assert unset not in kwargs
    assert engine_kwargs(_experiment({"seed": 7}), "/m", KNOWN)["seed"] == 7


def test_engine_args_unknown_keys_get_close_names() -> None:
    with pytest.raises(EngineArgsError, match=r"has no 'max_num_seq' \(did you mean 'max_num_seqs'\?\), 'zzz'$"):
        check_engine_args({"max_num_seq": 1, "zzz": 2}, KNOWN)
    error = pytest.raises(ConfigError, check_engine_args, {"enforce_eagr": True}, KNOWN).value
    assert isinstance(error, ValueError) and error.problems == ["'enforce_eagr' (did you mean 'enforce_eager'?)"]


def test_engine_args_may_not_override_what_the_experiment_sets() -> None:
    with pytest.raises(EngineArgsError, match=r"'dtype' is set from fp_precision; 'model' is set from model.name"):
        check_engine_args({"dtype": "float16", "model": "x"}, KNOWN | {"dtype", "model"})


def test_a_named_setting_this_vllm_lacks_is_an_error_not_silently_dropped() -> None:
    with pytest.raises(EngineArgsError, match=r"backend.block_size: vLLM .*no such engine parameter"):
        engine_kwargs(_experiment({"block_size": 16}), "/m", KNOWN)


def test_sampling_kwargs_greedy_forced_and_sampled() -> None:
    greedy = sampling_kwargs(_experiment())
    assert greedy == {"n": 1, "max_tokens": 8, "repetition_penalty": 1.0, "min_tokens": 8, "ignore_eos": True,
                      "temperature": 0.0}
    sampled = sampling_kwargs(
        _experiment(
            force_output_length=False,
            random_seed=5,
            decoder={"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.2},
        )
    )
    assert sampled == {"n": 1, "max_tokens": 8, "repetition_penalty": 1.2, "temperature": 0.7, "top_p": 0.9,
                       "top_k": 20, "seed": 5}


def test_sampling_kwargs_pass_the_stop_set_unless_the_length_is_forced() -> None:
    free = sampling_kwargs(_experiment(force_output_length=False), stop_token_ids=(2, 9))
    assert free == {"n": 1, "max_tokens": 8, "repetition_penalty": 1.0, "stop_token_ids": [2, 9], "temperature": 0.0}
    forced = sampling_kwargs(_experiment(), stop_token_ids=[2, 9])
    assert "stop_token_ids" not in forced and forced["ignore_eos"] is True


def test_load_key_follows_every_engine_setting_and_ignores_run_time_ones() -> None:
    base = _experiment()
    key = VLLMBackend.load_key(base)
    changed = {
        "max_num_seqs": 3, "max_num_batched_tokens": 512, "gpu_memory_utilization": 0.2, "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2, "enable_prefix_caching": False, "enable_chunked_prefill": False,
        "enforce_eager": True, "quantization": "fp8", "kv_cache_dtype": "fp8", "max_model_len": 128,
        "block_size": 16, "swap_space": 1.0, "seed": 1, "engine_args": {"kv_cache_memory_bytes": 1},
    }
    assert set(changed) == set(VLLMConfig.model_fields) - {"name"}, "cover every VLLMConfig field"
    for field, value in changed.items():
        assert VLLMBackend.load_key(_experiment({field: value})) != key, field
    for other in ({"fp_precision": "bfloat16"}, {"model": {"name": "builtin:tiny", "revision": "main"}},
                  {"random_seed": 1}):  # random_seed is the engine seed when backend.seed is null
        assert VLLMBackend.load_key(_experiment(**other)) != key, other
    for same in ({"num_input_prompts": 3}, {"max_output_tokens": 4}, {"decoder": {"do_sample": True}},
                 {"force_output_length": False}, {"warmup": {"num_prompts": 0}}):
        assert VLLMBackend.load_key(_experiment(**same)) == key, same


@pytest.mark.vllm
@needs_vllm
def test_against_the_installed_vllm() -> None:
    """The mapping is accepted by the real EngineArgs and SamplingParams of the installed vLLM."""
    import dataclasses

    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.sampling_params import RequestOutputKind

    from llem.backends.vllm.backend import engine_arg_names
    from llem.models.resolve import resolve_model_path

    known = engine_arg_names()
    path = resolve_model_path(_experiment().model)
    assert "max_num_seqs" in known and "model" in known
    exp = _experiment({"max_num_seqs": 3, "enforce_eager": True, "engine_args": {"max_logprobs": 3}})
    args = EngineArgs(**engine_kwargs(exp, path, known))
    assert args.max_num_seqs == 3 and args.max_logprobs == 3 and args.dtype == "float32"
    assert {f.name for f in dataclasses.fields(args)} == known
    with pytest.raises(EngineArgsError, match=r"'max_logprob' \(did you mean 'max_logprobs'"):
        engine_kwargs(_experiment({"engine_args": {"max_logprob": 3}}), "/m", known)
    if "swap_space" not in known:  # removed from vLLM's v1 engine: say so instead of dropping it
        with pytest.raises(EngineArgsError, match="backend.swap_space"):
            engine_kwargs(_experiment({"swap_space": 1.0}), "/m", known)

    forced = SamplingParams(**sampling_kwargs(_experiment()), output_kind=RequestOutputKind.DELTA)
    assert forced.max_tokens == forced.min_tokens == 8 and forced.ignore_eos and forced.temperature == 0.0
    sampled = SamplingParams(**sampling_kwargs(_experiment(decoder={"do_sample": True, "top_k": 5, "top_p": 0.5})))
    stopping = SamplingParams(**sampling_kwargs(_experiment(force_output_length=False), stop_token_ids=[2, 9]))
    assert stopping.stop_token_ids == [2, 9] and not stopping.ignore_eos and stopping.all_stop_token_ids == {2, 9}
    assert sampled.top_k == 5 and sampled.top_p == 0.5 and sampled.seed == 42 and sampled.min_tokens == 8


def test_kv_block_bytes_cover_every_rank_of_the_engine() -> None:
    """vLLM sizes blocks per rank; llem's KV figures are for the whole engine (all GPUs together)."""
    from types import SimpleNamespace

    from llem.backends.vllm.backend import _kv_block_bytes

    def config(tp: int, pp: int, kv_heads: int, mla: bool = False) -> Any:
        per_rank_heads = max(1, kv_heads // tp)  # vLLM replicates KV heads when there are fewer than ranks
        model = SimpleNamespace(
            dtype="bfloat16", use_mla=mla, hf_text_config=SimpleNamespace(num_hidden_layers=80),
            get_num_kv_heads=lambda pc: per_rank_heads, get_head_size=lambda: 128,
        )  # fmt: skip
        return SimpleNamespace(
            model_config=model,
            cache_config=SimpleNamespace(cache_dtype="auto", block_size=16),
            parallel_config=SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=pp),
        )

    whole = 16 * 2 * 80 * 8 * 128 * 2  # a block of 16 tokens: K and V, 80 layers, 8 KV heads, bf16
    assert _kv_block_bytes(config(tp=1, pp=1, kv_heads=8)) == whole
    assert _kv_block_bytes(config(tp=8, pp=1, kv_heads=8)) == whole  # one head per rank, eight ranks
    assert _kv_block_bytes(config(tp=4, pp=2, kv_heads=8)) == whole  # pipeline stages split the layers
    assert _kv_block_bytes(config(tp=16, pp=1, kv_heads=8)) == 2 * whole  # heads replicated on 16 ranks
    assert _kv_block_bytes(config(tp=1, pp=1, kv_heads=1, mla=True)) == 16 * 80 * 128 * 2  # one latent per token
