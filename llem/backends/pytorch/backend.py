"""Hugging Face transformers `generate` on PyTorch, with a timestamp per generated token."""

from __future__ import annotations

import gc
import importlib.util
import os
import time
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from llem.backends.base import Backend, GenerationOutput, LoadInfo, SequenceTiming
from llem.backends.errors import HardwareUnsupported
from llem.backends.resources import HostPeakRss, MemoryReport
from llem.backends.stop_tokens import stop_token_ids
from llem.config import ExperimentConfig, PyTorchConfig
from llem.models.architecture import architecture_dict
from llem.models.resolve import resolve_model_path
from llem.prompts.load import Prompt

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _StepClock(BaseStreamer):
    """Records when each decoding step's tokens reach the host.

    `generate` first hands the prompt to the streamer, then one batch of new tokens per
    step after copying them to the CPU (a device sync), so each timestamp is the moment
    that step's token exists on the host.
    """

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        now = time.perf_counter()
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.step_times.append(now)

    def end(self) -> None:
        pass


def _pytorch_settings(experiment: ExperimentConfig) -> PyTorchConfig:
    backend = experiment.backend
    assert isinstance(backend, PyTorchConfig)
    return backend


def _cache_bytes(cache: Any) -> int:
    """Bytes of the key/value tensors a transformers cache holds (0 when there is none)."""
    if cache is None:
        return 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        tensors = [t for layer in layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))]
    else:  # legacy tuple of (key, value) per layer
        tensors = [t for pair in cache for t in pair]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class PyTorchBackend(Backend):
    """transformers `AutoModelForCausalLM` + `generate`, batched by `backend.batch_size`."""

    name = "pytorch"

    def __init__(self) -> None:
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = torch.device("cpu")
        self._settings: dict[str, Any] = {}
        self._stop_ids: list[int] = []
        self._weights_bytes: int | None = None
        self._kv_peak_bytes: int | None = None
        self._host_rss = HostPeakRss(lambda: [os.getpid()], "this process (transformers runs in it)")

    @staticmethod
    def load_key(experiment: ExperimentConfig) -> str:
        b = _pytorch_settings(experiment)
        parts = (
            experiment.model.name,
            experiment.model.revision,
            experiment.model.trust_remote_code,
            experiment.fp_precision,
            b.attn_implementation,
            b.torch_compile,
            b.torch_compile_mode,
            b.load_in_4bit,
            b.load_in_8bit,
            b.bnb_4bit_quant_type,
            b.device,
            b.low_cpu_mem_usage,
        )
        return "pytorch|" + "|".join(str(p) for p in parts)

    def _pick_device(self, b: PyTorchConfig) -> torch.device:
        has_cuda = torch.cuda.is_available()
        if b.device == "cuda" and not has_cuda:
            raise HardwareUnsupported("backend.device=cuda but no CUDA device is available on this machine")
        if (b.load_in_4bit or b.load_in_8bit) and not has_cuda:
            raise HardwareUnsupported("4/8-bit loading (bitsandbytes) needs a CUDA device; none is available")
        if (b.load_in_4bit or b.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
            raise HardwareUnsupported("4/8-bit loading needs the bitsandbytes package: pip install bitsandbytes")
        if b.attn_implementation == "flash_attention_2" and not has_cuda:
            raise HardwareUnsupported("attn_implementation=flash_attention_2 needs a CUDA device")
        return torch.device("cuda" if has_cuda and b.device != "cpu" else "cpu")

    def load(self, experiment: ExperimentConfig) -> LoadInfo:
        b = _pytorch_settings(experiment)
        self._device = self._pick_device(b)
        path = resolve_model_path(experiment.model)
        kwargs: dict[str, Any] = {
            "revision": experiment.model.revision,
            "trust_remote_code": experiment.model.trust_remote_code,
        }
        transformers.utils.logging.disable_progress_bar()
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        stop_ids = stop_token_ids(path, experiment.model.revision, experiment.model.trust_remote_code, tokenizer)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model_kwargs: dict[str, Any] = dict(
            kwargs,
            dtype=_DTYPES[experiment.fp_precision],
            attn_implementation=b.attn_implementation,
            low_cpu_mem_usage=b.low_cpu_mem_usage,
        )
        if b.load_in_4bit or b.load_in_8bit:
            model_kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=b.load_in_4bit,
                load_in_8bit=b.load_in_8bit,
                bnb_4bit_quant_type=b.bnb_4bit_quant_type,
                bnb_4bit_compute_dtype=_DTYPES[experiment.fp_precision],
            )
            model_kwargs["device_map"] = {"": self._device.index or 0}
        model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
        if not (b.load_in_4bit or b.load_in_8bit):
            model = model.to(self._device)
        model.eval()
        if b.torch_compile:
            model.forward = torch.compile(model.forward, mode=b.torch_compile_mode)
        self._model, self._tokenizer, self._stop_ids = model, tokenizer, stop_ids
        self.synchronize()
        load_s = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters())
        model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        self._weights_bytes = model.get_memory_footprint(return_buffers=False)
        self._settings = {
            "model_path": str(path),
            "device": str(self._device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "attn_implementation": getattr(model.config, "_attn_implementation", b.attn_implementation),
            "torch_compile": b.torch_compile,
            "quantization": "4bit" if b.load_in_4bit else "8bit" if b.load_in_8bit else None,
            "batch_size": b.batch_size,
            "sort_by_length": b.sort_by_length,
            "use_cache": b.use_cache,
            "stop_token_ids": list(stop_ids),
            "torch_threads": torch.get_num_threads(),
            "architecture": architecture_dict(model.config),
        }
        return LoadInfo(
            load_s=load_s, model_bytes=model_bytes, parameters=params, device=str(self._device), settings=self._settings
        )

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("model not loaded")
        return self._tokenizer

    def _batch_tensors(self, batch: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad the prompts' own token ids, so every backend sees the same tokens."""
        width = max(len(p.token_ids) for p in batch)
        pad = self._tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(batch):
            n = len(prompt.token_ids)
            ids[row, width - n :] = torch.tensor(prompt.token_ids, dtype=torch.long)
            mask[row, width - n :] = 1
        return ids.to(self._device), mask.to(self._device)

    def _generation_kwargs(self, experiment: ExperimentConfig) -> dict[str, Any]:
        d = experiment.decoder
        kwargs: dict[str, Any] = {
            "max_new_tokens": experiment.max_output_tokens,
            "do_sample": d.do_sample,
            "repetition_penalty": d.repetition_penalty,
            "pad_token_id": self._tokenizer.pad_token_id,
            "eos_token_id": list(self._stop_ids) or None,
            "use_cache": _pytorch_settings(experiment).use_cache,
        }
        if experiment.force_output_length:
            kwargs["min_new_tokens"] = experiment.max_output_tokens
        if d.do_sample:
            kwargs.update(temperature=d.temperature, top_p=d.top_p, top_k=d.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _count_new_tokens(self, new_ids: torch.Tensor, forced: bool) -> list[int]:
        """Tokens each sequence really generated: up to and including its first stop token unless forced."""
        steps = new_ids.shape[1]
        if forced:
            return [steps] * new_ids.shape[0]
        stops = set(self._stop_ids)
        counts = []
        for row in new_ids.tolist():
            counts.append(next((i + 1 for i, token in enumerate(row) if token in stops), steps))
        return counts

    def generate(self, prompts: list[Prompt], experiment: ExperimentConfig) -> GenerationOutput:
        if self._model is None:
            raise RuntimeError("model not loaded")
        b = _pytorch_settings(experiment)
        # run-time settings do not reload the model, so a reused model records this call's, not its loader's
        self._settings.update(batch_size=b.batch_size, sort_by_length=b.sort_by_length, use_cache=b.use_cache)
        order = list(range(len(prompts)))
        if b.sort_by_length:
            order.sort(key=lambda i: len(prompts[i].token_ids), reverse=True)
        kwargs = self._generation_kwargs(experiment)
        timings: dict[int, SequenceTiming] = {}
        torch.manual_seed(experiment.random_seed)
        arrival = time.perf_counter()  # every prompt arrives when the call starts; batches after the first wait
        for first in range(0, len(order), b.batch_size):
            indices = order[first : first + b.batch_size]
            batch = [prompts[i] for i in indices]
            self.synchronize()
            start = time.perf_counter()
            ids, mask = self._batch_tensors(batch)
            clock = _StepClock()
            with torch.inference_mode():
                out = self._model.generate(
                    input_ids=ids, attention_mask=mask, streamer=clock, return_dict_in_generate=True, **kwargs
                )
            self._kv_peak_bytes = max(self._kv_peak_bytes or 0, _cache_bytes(out.past_key_values)) or None
            new_ids = out.sequences[:, ids.shape[1] :]
            counts = self._count_new_tokens(new_ids, experiment.force_output_length)
            for row, index in enumerate(indices):
                timings[index] = SequenceTiming(
                    prompt_index=index,
                    input_tokens=len(prompts[index].token_ids),
                    arrival_s=arrival,
                    scheduled_s=start,
                    token_times_s=clock.step_times[: counts[row]],
                )
        return GenerationOutput(sequences=[timings[i] for i in range(len(prompts))])

    def unload(self) -> None:
        self._model = None
        self._tokenizer = None
        self._weights_bytes = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def reset_peak_memory(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device)
        self._host_rss.start()
        self._kv_peak_bytes = None

    def memory_stats(self) -> dict[str, Any]:
        report = MemoryReport()
        report.set(
            "weights_bytes",
            self._weights_bytes,
            "bytes of the model's parameters as loaded (elements x element size; packed for 4/8-bit)",
            "model not loaded",
        )
        if self._device.type == "cuda":
            report.set(
                "peak_allocated_bytes",
                int(torch.cuda.max_memory_allocated(self._device)),
                "torch.cuda.max_memory_allocated since the window started (weights, activations, KV cache)",
            )
            report.set(
                "reserved_bytes",
                int(torch.cuda.max_memory_reserved(self._device)),
                "torch.cuda.max_memory_reserved since the window started (the caching allocator's pool)",
            )
        else:
            report.unavailable(
                "peak_allocated_bytes",
                "PyTorch's CPU allocator keeps no allocation statistics; host_peak_rss_bytes is the process figure",
            )
            report.unavailable(
                "reserved_bytes", "on CPU PyTorch keeps no memory pool: freed memory goes back to the system allocator"
            )
        report.set(
            "kv_cache_peak_bytes",
            self._kv_peak_bytes,
            "largest KV cache of one batch in the window: bytes of the key and value tensors generate() returned "
            "(padded prompt width + generated tokens, every row)",
            "no KV cache in the window (backend.use_cache=false, or no generate call since the window started)",
        )
        self._host_rss.report(report)
        return report.as_dict()

    def effective_settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "transformers": transformers.__version__}

    def devices(self) -> list[int] | None:
        if self._device.type != "cuda":
            return None
        return [self._device.index if self._device.index is not None else torch.cuda.current_device()]
