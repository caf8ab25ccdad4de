"""TensorRT-LLM through its LLM API, with engines cached on disk and tokens timestamped as they stream in.

Building a TensorRT engine takes minutes, so each engine is built once per set of build-affecting
settings (model, revision, precision, every build parameter, TensorRT-LLM version), saved under
the engine cache, and loaded from there afterwards. Generation submits every prompt at once with
`generate_async(..., streaming=True)` and records the host time of each streamed token.

`tensorrt_llm` is imported only inside `load()`, so this module imports on any machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llem.backends.base import Backend, GenerationOutput, LoadInfo, SequenceTiming
from llem.backends.errors import HardwareUnsupported
from llem.backends.sampling import engine_sampling_kwargs
from llem.backends.resources import HostPeakRss, KvCachePeak, MemoryReport, checkpoint_sizes, report_pooled_engine
from llem.backends.stop_tokens import stop_token_ids
from llem.config import ConfigError, ExperimentConfig, TensorRTConfig
from llem.models.architecture import architecture_dict
from llem.models.resolve import resolve_model_path
from llem.models.tiny import default_cache_dir
from llem.prompts.load import Prompt

NEEDS = (
    "TensorRT-LLM needs an NVIDIA GPU and `pip install llem[tensorrt]` (NVIDIA's tensorrt-llm wheels, "
    "Linux with CUDA)"
)

# llem's quantisation names -> TensorRT-LLM QuantAlgo members.
QUANT_ALGOS: dict[str, str] = {
    "fp8": "FP8",
    "int8_sq": "W8A8_SQ_PER_CHANNEL",
    "int4_awq": "W4A16_AWQ",
    "w4a16": "W4A16",
    "w8a16": "W8A16",
    "nvfp4": "NVFP4",
}
KV_CACHE_QUANT_ALGOS: dict[str, str] = {"fp8": "FP8", "int8": "INT8"}

# TensorRTConfig fields that do not change the built engine (run-time settings, or where it is stored).
RUNTIME_FIELDS = frozenset({"name", "kv_cache_free_gpu_memory_fraction", "engine_cache_dir"})

ENGINE_MARKER = "llem-engine.json"
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


class BuildArgsError(ConfigError, ValueError):
    """`backend.build_args` names something TensorRT-LLM's BuildConfig does not have."""


def _trt_settings(experiment: ExperimentConfig) -> TensorRTConfig:
    backend = experiment.backend
    assert isinstance(backend, TensorRTConfig)
    return backend


def build_settings(experiment: ExperimentConfig, trtllm_version: str, gpu: str = "") -> dict[str, Any]:
    """Everything that decides the built engine's bytes; a change in any one means another build.

    `gpu` is the device model: TensorRT engines are compiled for one GPU architecture.
    """
    b = _trt_settings(experiment)
    return {
        "model": experiment.model.name,
        "revision": experiment.model.revision,
        "precision": experiment.fp_precision,
        "build": b.model_dump(mode="json", exclude=set(RUNTIME_FIELDS)),
        "tensorrt_llm": trtllm_version,
        "gpu": gpu,
    }


def engine_cache_key(experiment: ExperimentConfig, trtllm_version: str, gpu: str = "") -> str:
    """Short hash of `build_settings`: the engine's directory name in the cache."""
    payload = json.dumps(build_settings(experiment, trtllm_version, gpu), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def engine_cache_root(backend: TensorRTConfig) -> Path:
    """`backend.engine_cache_dir`, else `$LLEM_CACHE_DIR/trt-engines` (`~/.cache/llem/trt-engines`)."""
    if backend.engine_cache_dir:
        return Path(backend.engine_cache_dir).expanduser()
    return default_cache_dir() / "trt-engines"


def _gpu_name() -> str:
    """Model name of the first visible NVIDIA GPU ("" when NVML cannot say)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001
        return ""
    return name.decode() if isinstance(name, bytes) else str(name)


def _has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no library: no usable GPU
        return False


def require_tensorrt_llm() -> None:
    """Raise HardwareUnsupported naming what this machine lacks (package, GPU or both)."""
    missing = []
    if not _has_nvidia_gpu():
        missing.append("no NVIDIA GPU is visible (NVML found none)")
    if importlib.util.find_spec("tensorrt_llm") is None:
        missing.append("the tensorrt_llm package is not installed")
    if missing:
        raise HardwareUnsupported(f"{NEEDS}; on this machine {' and '.join(missing)}")


def _field_names(cls: Any) -> frozenset[str]:
    """Constructor fields of a dataclass or pydantic model."""
    if dataclasses.is_dataclass(cls):
        return frozenset(f.name for f in dataclasses.fields(cls))
    return frozenset(getattr(cls, "model_fields", {}))


def check_build_args(build_args: dict[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(build_args) - known)
    if not unknown or not known:
        return
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        problems.append(f"{key!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
    raise BuildArgsError(f"backend.build_args: TensorRT-LLM BuildConfig has no {', '.join(problems)}", problems)


def sampling_kwargs(experiment: ExperimentConfig, stop_token_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """TensorRT-LLM `SamplingParams` keyword arguments: the experiment's decoder, as the other backends apply it.

    TensorRT-LLM drops a matched stop token from the output ids unless `include_stop_str_in_output`;
    it is kept, so a sequence's length counts its stop token as on the other engines.
    """
    kwargs = engine_sampling_kwargs(experiment, greedy={"top_k": 1}, stop_token_ids=stop_token_ids)
    if "stop_token_ids" in kwargs:
        kwargs["include_stop_str_in_output"] = True
    return kwargs


def kv_bytes_per_token(config: Any, element_bytes: int) -> int | None:
    """Keys and values of one token across all layers, from a Hugging Face config (standard attention)."""
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if layers is None or not heads:
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 0) // heads
    if not head_dim:
        return None
    return 2 * int(layers) * int(kv_heads) * int(head_dim) * element_bytes


def kv_cache_block_stats(stats: Iterable[dict[str, Any] | str]) -> tuple[list[int], int | None, int | None]:
    """(used blocks per iteration, pool blocks, tokens per block) from TensorRT-LLM iteration stats
    (`LLM.get_stats()`, dicts or their JSON text)."""
    used: list[int] = []
    pool = tokens = None
    for entry in stats:
        record = json.loads(entry) if isinstance(entry, str) else entry
        kv = record.get("kvCacheStats") or {}
        if kv.get("usedNumBlocks") is not None:
            used.append(int(kv["usedNumBlocks"]))
        if kv.get("maxNumBlocks") is not None:
            pool = int(kv["maxNumBlocks"])
        if kv.get("tokensPerBlock") is not None:
            tokens = int(kv["tokensPerBlock"])
    return used, pool, tokens


def _hf_config(path: str, experiment: ExperimentConfig) -> Any:
    """The model's (text) Hugging Face config, None when it has none."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            path, revision=experiment.model.revision, trust_remote_code=experiment.model.trust_remote_code
        )
    except Exception:  # noqa: BLE001 - no HF config: FLOPs and KV sizes unavailable
        return None
    return getattr(config, "text_config", None) or config


class TensorRTBackend(Backend):
    """TensorRT-LLM's `LLM` (TensorRT engine flavour), one engine per build-settings hash."""

    name = "tensorrt"

    def __init__(self) -> None:
        self._llm: Any = None
        self._tokenizer: Any = None
        self._settings: dict[str, Any] = {}
        self._model_bytes: int | None = None
        self._weights_missing = "model not loaded"
        self._stop_ids: list[int] = []
        self._kv_token_bytes: int | None = None
        self._kv_peak = KvCachePeak()
        self._kv_pool: tuple[int | None, int | None] = (None, None)  # (blocks, tokens per block)
        self._kv_window: dict[str, Any] = {}
        self._host_rss = HostPeakRss(scope="this process and TensorRT-LLM's worker processes (its descendants)")

    @staticmethod
    def load_key(experiment: ExperimentConfig) -> str:
        b = _trt_settings(experiment)
        parts = {
            "model": experiment.model.name,
            "revision": experiment.model.revision,
            "trust_remote_code": experiment.model.trust_remote_code,
            "precision": experiment.fp_precision,
            "engine": b.model_dump(mode="json", exclude={"name"}),
        }
        return "tensorrt|" + json.dumps(parts, sort_keys=True, default=str)

    def load(self, experiment: ExperimentConfig) -> LoadInfo:
        require_tensorrt_llm()
        b = _trt_settings(experiment)
        import tensorrt_llm
        from transformers import AutoTokenizer

        llm_cls = _llm_class()
        path = resolve_model_path(experiment.model)
        gpu = _gpu_name()
        key = engine_cache_key(experiment, tensorrt_llm.__version__, gpu)
        engine_dir = engine_cache_root(b) / key
        cached = (engine_dir / ENGINE_MARKER).is_file()
        build_config = None if cached else self._build_config(b)
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=experiment.model.revision, trust_remote_code=experiment.model.trust_remote_code
        )
        stop_ids = stop_token_ids(path, experiment.model.revision, experiment.model.trust_remote_code, tokenizer)
        kwargs = self._llm_kwargs(experiment, path, llm_cls, build_config)
        llm = llm_cls(model=str(engine_dir) if cached else path, **kwargs)
        build_s = None
        if not cached:
            build_s = time.perf_counter() - start
            self._save_engine(llm, engine_dir, build_settings(experiment, tensorrt_llm.__version__, gpu))
        load_s = time.perf_counter() - start
        self._llm, self._tokenizer, self._stop_ids = llm, tokenizer, stop_ids
        sizes = checkpoint_sizes(path, experiment.model.revision)
        parameters = None if sizes is None or sizes[2] else sizes[0]
        self._model_bytes = parameters * _DTYPE_BYTES[experiment.fp_precision] if parameters and not b.quantization else None
        self._weights_missing = (
            "weights quantised at build time: TensorRT-LLM does not report their in-memory size"
            if b.quantization or (sizes is not None and sizes[2])
            else "no local safetensors checkpoint to read the weight sizes from"
        )
        hf_config = _hf_config(path, experiment)
        element = 1 if b.kv_cache_dtype in KV_CACHE_QUANT_ALGOS else _DTYPE_BYTES[experiment.fp_precision]
        self._kv_token_bytes = None if hf_config is None else kv_bytes_per_token(hf_config, element)
        self._settings = {
            "model_path": path,
            "device": "cuda",
            "dtype": experiment.fp_precision,
            "engine_dir": str(engine_dir),
            "engine_cache": "hit" if cached else "built",
            "engine_cache_key": key,
            "gpu": gpu,
            "build_s": build_s,
            "max_batch_size": b.max_batch_size,
            "max_num_tokens": b.max_num_tokens,
            "max_input_len": b.max_input_len,
            "max_seq_len": b.max_seq_len,
            "tp_size": b.tp_size,
            "pp_size": b.pp_size,
            "quantization": b.quantization,
            "kv_cache_dtype": b.kv_cache_dtype,
            "kv_cache_free_gpu_memory_fraction": b.kv_cache_free_gpu_memory_fraction,
            "enable_chunked_context": b.enable_chunked_context,
            "kv_block_reuse": False,
            "build_args": dict(b.build_args),
            "stop_token_ids": list(stop_ids),
            "architecture": architecture_dict(hf_config),
        }
        self._settings.update(_engine_build_config(engine_dir))
        return LoadInfo(
            load_s=load_s, model_bytes=self._model_bytes, parameters=parameters, device="cuda", settings=self._settings
        )

    @staticmethod
    def _build_config(b: TensorRTConfig) -> Any:
        from tensorrt_llm.llmapi import BuildConfig

        check_build_args(b.build_args, _field_names(BuildConfig))
        named = {
            "max_batch_size": b.max_batch_size,
            "max_num_tokens": b.max_num_tokens,
            "max_input_len": b.max_input_len,
            "max_seq_len": b.max_seq_len,
        }
        config = BuildConfig(**{k: v for k, v in named.items() if v is not None}, **b.build_args)
        plugins = getattr(config, "plugin_config", None)
        if b.enable_chunked_context and plugins is not None and hasattr(plugins, "use_paged_context_fmha"):
            plugins.use_paged_context_fmha = True  # chunked context needs it compiled into the engine
        return config

    @staticmethod
    def _llm_kwargs(experiment: ExperimentConfig, path: str, llm_cls: Any, build_config: Any) -> dict[str, Any]:
        from tensorrt_llm.llmapi import KvCacheConfig, QuantAlgo, QuantConfig

        b = _trt_settings(experiment)
        kwargs: dict[str, Any] = {
            "tokenizer": path,
            "dtype": experiment.fp_precision,
            "tensor_parallel_size": b.tp_size,
            "pipeline_parallel_size": b.pp_size,
            "trust_remote_code": experiment.model.trust_remote_code,
            # No KV block reuse across requests: the warmup and earlier passes send the same prompts, and reused
            # blocks would skip prefill work the window reports (vLLM's prefix cache is emptied per pass alike).
            "kv_cache_config": KvCacheConfig(
                free_gpu_memory_fraction=b.kv_cache_free_gpu_memory_fraction, enable_block_reuse=False
            ),
        }
        chunked = "enable_chunked_prefill" if "enable_chunked_prefill" in _llm_arg_names(llm_cls) else "enable_chunked_context"
        kwargs[chunked] = b.enable_chunked_context
        if build_config is not None:  # building from the checkpoint, not loading a saved engine
            kwargs["build_config"] = build_config
            if experiment.model.revision is not None:
                kwargs["revision"] = experiment.model.revision
            quant: dict[str, Any] = {}
            if b.quantization is not None:
                quant["quant_algo"] = getattr(QuantAlgo, QUANT_ALGOS[b.quantization])
            if b.kv_cache_dtype in KV_CACHE_QUANT_ALGOS:
                quant["kv_cache_quant_algo"] = getattr(QuantAlgo, KV_CACHE_QUANT_ALGOS[b.kv_cache_dtype])
            if quant:
                kwargs["quant_config"] = QuantConfig(**quant)
        return kwargs

    @staticmethod
    def _save_engine(llm: Any, engine_dir: Path, settings: dict[str, Any]) -> None:
        """Save next to the cache entry, then rename into place, so readers never see half an engine."""
        engine_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{engine_dir.name}.build-", dir=engine_dir.parent))
        try:
            llm.save(str(tmp))
            marker = {"build_settings": settings, "saved_at": time.time()}
            (tmp / ENGINE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            try:
                os.rename(tmp, engine_dir)
            except OSError:
                if not (engine_dir / ENGINE_MARKER).is_file():  # a concurrent build that finished first is fine
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("model not loaded")
        return self._tokenizer

    def generate(self, prompts: list[Prompt], experiment: ExperimentConfig) -> GenerationOutput:
        if self._llm is None:
            raise RuntimeError("model not loaded")
        from tensorrt_llm.llmapi import SamplingParams

        kwargs = sampling_kwargs(experiment, self._stop_ids)
        if "return_perf_metrics" in _field_names(SamplingParams):
            kwargs["return_perf_metrics"] = True  # per-request timing, for when each request was first scheduled
        params = SamplingParams(**kwargs)
        times: list[list[float]] = [[] for _ in prompts]
        texts = ["" for _ in prompts]
        scheduled: list[float | None] = [None for _ in prompts]
        submitted: list[float] = []
        start = time.perf_counter()

        async def run() -> None:
            # Results must be created inside the running loop for `async for` to stream them. Each submission's
            # host time anchors the engine's own arrival-to-scheduled interval on the host clock, so the time
            # spent submitting earlier prompts counts as waiting (as vLLM's scheduled timestamps do).
            results = []
            for p in prompts:
                submitted.append(time.perf_counter())
                results.append(self._llm.generate_async(list(p.token_ids), sampling_params=params, streaming=True))

            async def follow(i: int, result: Any) -> None:
                seen = 0
                async for out in result:
                    now = time.perf_counter()
                    completion = out.outputs[0]
                    count = len(completion.token_ids)  # cumulative: new tokens are the growth
                    times[i].extend([now] * (count - seen))
                    seen = count
                    texts[i] = completion.text
                    if scheduled[i] is None:
                        scheduled[i] = _scheduled_offset_s(completion)

            await asyncio.gather(*(follow(i, r) for i, r in enumerate(results)))

        asyncio.run(run())
        sequences = [
            SequenceTiming(
                prompt_index=i,
                input_tokens=len(p.token_ids),
                arrival_s=start,
                token_times_s=times[i],
                scheduled_s=None if scheduled[i] is None else submitted[i] + scheduled[i],
                scheduled_unavailable_reason=None if scheduled[i] is not None else _NO_SCHEDULE_TIME,
            )
            for i, p in enumerate(prompts)
        ]
        return GenerationOutput(sequences=sequences, texts=texts)

    def unload(self) -> None:
        llm, self._llm, self._tokenizer = self._llm, None, None
        if llm is not None:
            try:
                llm.shutdown()
            finally:
                del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def synchronize(self) -> None:
        """Streaming returns a token only once it is on the host, so nothing is left in flight."""

    def _iteration_stats(self, timeout_s: float) -> list[Any] | None:
        """Iteration stats queued since the last call (the LLM API hands each out once); None if unavailable."""
        try:
            return list(self._llm.get_stats(timeout=timeout_s))
        except Exception:  # noqa: BLE001 - stats are best effort: older versions or disabled collection
            return None

    def reset_peak_memory(self) -> None:
        if self._llm is not None:
            self._iteration_stats(0.5)  # drop what warmup left queued
        self._kv_peak.reset()
        self._host_rss.start()

    def memory_stats(self) -> dict[str, Any]:
        report = MemoryReport()
        stats = self._iteration_stats(2.0) if self._llm is not None else None
        used, pool_blocks, tokens_per_block = kv_cache_block_stats(stats or [])
        for blocks in used:
            self._kv_peak.observe(blocks)
        if pool_blocks is not None:
            self._kv_pool = (pool_blocks, tokens_per_block)
        pool_blocks, tokens_per_block = self._kv_pool
        block_bytes = None
        if self._kv_token_bytes is not None and tokens_per_block is not None:
            block_bytes = tokens_per_block * self._kv_token_bytes
        self._kv_window = self._kv_peak.summary(
            pool_blocks,
            block_bytes,
            "TensorRT-LLM iteration stats (kvCacheStats.usedNumBlocks, highest over the window's iterations)",
        )
        report_pooled_engine(
            report,
            engine="TensorRT-LLM",
            weights=self._model_bytes,
            weights_missing=self._weights_missing,
            pool_bytes=None if block_bytes is None or pool_blocks is None else pool_blocks * block_bytes,
            pool_method="the KV cache pool (kvCacheStats.maxNumBlocks x tokensPerBlock x KV bytes per token of the "
            "whole model, each rank holding its share of every block); the engine's activation workspace is not "
            "included",
            pool_missing="TensorRT-LLM returned no iteration stats (LLM.get_stats), so its KV cache pool size is unknown"
            if stats is None
            else "the KV cache pool size is unknown (no kvCacheStats in the iteration stats, or no model config)",
            kv_window=self._kv_window,
            kv_method="most KV cache blocks in use at once (kvCacheStats.usedNumBlocks) x bytes per block",
        )
        self._host_rss.report(report)
        return report.as_dict()

    def effective_settings(self) -> dict[str, Any]:
        return {**self._settings, "kv_cache_usage": dict(self._kv_window)}

    def versions(self) -> dict[str, str]:
        import tensorrt_llm
        import torch

        return {"tensorrt_llm": tensorrt_llm.__version__, "torch": torch.__version__}

    def devices(self) -> list[int] | None:
        b = self._settings
        if not b:
            return None
        return list(range(int(b.get("tp_size", 1)) * int(b.get("pp_size", 1))))


_NO_SCHEDULE_TIME = (
    "this TensorRT-LLM did not return request perf metrics (timing_metrics.first_scheduled_time), so when the "
    "request was first scheduled is unknown"
)


def _scheduled_offset_s(completion: Any) -> float | None:
    """Seconds from a request's arrival to its first scheduling, from TensorRT-LLM's per-request perf metrics."""
    timing = getattr(getattr(completion, "request_perf_metrics", None), "timing_metrics", None)
    arrival = getattr(timing, "arrival_time", None)
    first = getattr(timing, "first_scheduled_time", None)
    if arrival is None or first is None:
        return None
    delta = first - arrival
    seconds = delta.total_seconds() if hasattr(delta, "total_seconds") else float(delta)
    return seconds if seconds >= 0 else None


def _llm_class() -> Any:
    """The TensorRT-engine `LLM`: `tensorrt_llm._tensorrt_engine.LLM` since 1.0 (plain `LLM` is PyTorch there)."""
    try:
        from tensorrt_llm._tensorrt_engine import LLM
    except ImportError:
        from tensorrt_llm import LLM
    return LLM


def _llm_arg_names(llm_cls: Any) -> frozenset[str]:
    """Keyword names the LLM's argument model accepts (empty when this version does not say)."""
    for module, name in (("tensorrt_llm.llmapi.llm_args", "TrtLlmArgs"), ("tensorrt_llm.llmapi.llm_args", "LlmArgs")):
        try:
            args_cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        return _field_names(args_cls)
    return frozenset()


def _engine_build_config(engine_dir: Path) -> dict[str, Any]:
    """The limits actually built into the saved engine (from its config.json), for the result."""
    try:
        config = json.loads((engine_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    build = config.get("build_config", {})
    keys = ("max_batch_size", "max_num_tokens", "max_input_len", "max_seq_len", "max_beam_width")
    return {f"built_{k}": build.get(k) for k in keys if k in build}
