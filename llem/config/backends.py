"""Per-engine parameter schemas, discriminated on `backend.name`.

Each class names the engine's real knobs; anything an engine accepts that is not
named here goes through an explicit passthrough dict, so nothing is silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from llem.config._base import StrictModel

BACKEND_NAMES: tuple[str, ...] = ("pytorch", "vllm", "tensorrt")


class PyTorchConfig(StrictModel):
    """Hugging Face transformers `generate` on PyTorch."""

    name: Literal["pytorch"] = Field("pytorch", description="Backend discriminator.")
    batch_size: int = Field(1, ge=1, description="Prompts generated together in one `generate` call.")
    sort_by_length: bool = Field(
        False, description="Sort prompts by token length before batching (less padding, different batch mix)."
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel passed to `from_pretrained(attn_implementation=...)`."
    )
    torch_compile: bool = Field(False, description="Wrap the model's forward in `torch.compile`.")
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="`torch.compile` mode, used only when `torch_compile` is true."
    )
    load_in_4bit: bool = Field(False, description="Load weights in 4-bit with bitsandbytes (CUDA only).")
    load_in_8bit: bool = Field(False, description="Load weights in 8-bit with bitsandbytes (CUDA only).")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="bitsandbytes 4-bit quantisation type.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs: `auto` picks CUDA when present, else CPU."
    )
    use_cache: bool = Field(True, description="Use the KV cache during generation.")
    low_cpu_mem_usage: bool = Field(True, description="Load weights without a full extra copy in host memory.")

    @model_validator(mode="after")
    def _one_quantisation(self) -> "PyTorchConfig":
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit exclude each other: choose one")
        return self


class VLLMConfig(StrictModel):
    """vLLM's offline engine (`vllm.LLM`)."""

    name: Literal["vllm"] = Field("vllm", description="Backend discriminator.")
    max_num_seqs: int = Field(256, ge=1, description="Most sequences scheduled in one engine step.")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="Most tokens processed in one engine step (engine default when null)."
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of device memory vLLM may take (on CPU: fraction of host RAM for the KV cache).",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="Tensor-parallel degree (GPUs per replica).")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline-parallel degree.")
    enable_prefix_caching: bool | None = Field(None, description="Automatic prefix caching (engine default when null).")
    enable_chunked_prefill: bool | None = Field(None, description="Chunked prefill (engine default when null).")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs and run eagerly.")
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors", "marlin"] | None = Field(
        None, description="Weight quantisation method (null: the checkpoint's own, or none)."
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field("auto", description="KV cache data type.")
    max_model_len: int | None = Field(None, ge=1, description="Context length (engine default: the model's).")
    block_size: int | None = Field(None, ge=1, description="KV cache block size in tokens (engine default when null).")
    swap_space: float | None = Field(None, ge=0, description="CPU swap space per GPU in GiB (engine default when null).")
    seed: int | None = Field(None, description="Engine seed (null: the experiment's `random_seed`).")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further `vllm.EngineArgs` keyword arguments, checked against vLLM's own names when it is installed.",
    )

    @model_validator(mode="after")
    def _batched_tokens_cover_seqs(self) -> "VLLMConfig":
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs ({self.max_num_seqs})"
            )
        named = set(type(self).model_fields) - {"engine_args", "name"}
        clash = sorted(named & set(self.engine_args))
        if clash:
            raise ValueError(f"engine_args repeats named parameters {clash}: set them directly on backend")
        return self


class TensorRTConfig(StrictModel):
    """TensorRT-LLM through its LLM API."""

    name: Literal["tensorrt"] = Field("tensorrt", description="Backend discriminator.")
    max_batch_size: int = Field(8, ge=1, description="Largest batch the engine is built for.")
    max_num_tokens: int | None = Field(None, ge=1, description="Most tokens per engine step (build default when null).")
    max_input_len: int | None = Field(None, ge=1, description="Longest prompt the engine is built for.")
    max_seq_len: int | None = Field(None, ge=1, description="Longest prompt + output the engine is built for.")
    tp_size: int = Field(1, ge=1, description="Tensor-parallel degree.")
    pp_size: int = Field(1, ge=1, description="Pipeline-parallel degree.")
    quantization: Literal["fp8", "int8_sq", "int4_awq", "w4a16", "w8a16", "nvfp4"] | None = Field(
        None, description="Quantisation applied when building the engine."
    )
    kv_cache_dtype: Literal["auto", "fp8", "int8"] = Field("auto", description="KV cache data type.")
    kv_cache_free_gpu_memory_fraction: float = Field(
        0.9, gt=0.0, le=1.0, description="Fraction of free device memory given to the KV cache."
    )
    enable_chunked_context: bool = Field(False, description="Chunked context (prefill) processing.")
    engine_cache_dir: str | None = Field(
        None, description="Where built engines are cached, keyed by the build-affecting settings (default: llem cache)."
    )
    build_args: dict[str, Any] = Field(
        default_factory=dict, description="Further TensorRT-LLM `BuildConfig` arguments."
    )


BackendConfig = Annotated[Union[PyTorchConfig, VLLMConfig, TensorRTConfig], Field(discriminator="name")]

BACKEND_CLASSES: dict[str, type[StrictModel]] = {
    "pytorch": PyTorchConfig,
    "vllm": VLLMConfig,
    "tensorrt": TensorRTConfig,
}


def backends_with_field(key: str) -> list[str]:
    """Which backends' schemas name `key` (used to explain a key given to the wrong backend)."""
    return [name for name, cls in BACKEND_CLASSES.items() if key in cls.model_fields]
