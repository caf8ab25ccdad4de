"""Each job's GPU memory, estimated before anything runs, and the jobs that will not fit on this machine's GPUs.

A job that runs out of device memory fails after its model has loaded, often hours into a campaign.
The estimate here needs only the model's config.json: weights are its parameter count times the
bytes of the job's precision (or quantisation), and the KV cache is 2 (keys and values) x layers x
KV heads x head size x bytes for every position of the job's batch (longest prompt plus output).
It matches what a run records as `memory.weights_kv_peak_bytes`; activations, the engine's own
buffers and the allocator's slack come on top, which is why a fit check keeps a margin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_KV_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1}
# quantised loads llem knows the weight width of (bytes per parameter of the linear layers)
_QUANTISED_BYTES = {"load_in_8bit": 1.0, "load_in_4bit": 0.5}
FIT_MARGIN = 0.9  # of a GPU's memory that the weights and KV cache may take (activations need the rest)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes on the job's GPUs (per GPU when the engine shards the model), or why there is none."""

    weights_bytes: int | None
    kv_cache_bytes: int | None
    gpus: int = 1
    reason: str | None = None

    @property
    def total_bytes(self) -> int | None:
        if self.weights_bytes is None or self.kv_cache_bytes is None:
            return None
        return self.weights_bytes + self.kv_cache_bytes

    @property
    def per_gpu_bytes(self) -> int | None:
        total = self.total_bytes
        return None if total is None else -(-total // max(1, self.gpus))


def read_model_config(model: dict[str, Any]) -> dict[str, Any] | None:
    """config.json of a built-in model, a local directory, or a Hub model already in the local cache (no download)."""
    name = str(model.get("name", ""))
    path: Path | None
    if name.startswith("builtin:"):
        from llem.config.experiment import ModelConfig
        from llem.models.resolve import resolve_model_path

        path = Path(resolve_model_path(ModelConfig.model_validate(model))) / "config.json"
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser() / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "config.json", revision=model.get("revision"))
        except Exception:  # noqa: BLE001 - an id the hub library refuses is simply not cached
            found = None
        path = Path(found) if isinstance(found, str) else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _text_config(hf: dict[str, Any]) -> dict[str, Any]:
    return hf.get("text_config") if isinstance(hf.get("text_config"), dict) else hf  # type: ignore[return-value]


def architecture(hf: dict[str, Any]) -> dict[str, Any] | None:
    """The model's shapes (llem.models.architecture) from its config.json data."""
    from types import SimpleNamespace

    from llem.models.architecture import architecture_dict

    return architecture_dict(SimpleNamespace(**_text_config(hf)))


def parameter_count(hf: dict[str, Any]) -> tuple[int, int] | None:
    """(parameters in linear layers, other parameters) of a decoder-only transformer; None if not counted here."""
    arch = architecture(hf)
    if arch is None or arch.get("experts") or arch.get("latent_attention"):
        return None  # mixture of experts and latent attention: not estimated
    c = _text_config(hf)
    h, layers, inter, vocab = arch["hidden_size"], arch["num_layers"], arch["intermediate_size"], arch["vocab_size"]
    q = arch["num_heads"] * arch["head_dim"]
    kv = arch["num_kv_heads"] * arch["head_dim"]
    attention = 2 * h * q + 2 * h * kv
    mlp = (3 if arch["gated_mlp"] else 2) * h * inter
    biases = (q + 2 * kv + h) if c.get("attention_bias") else 0  # q, k, v and output projections
    norms = 2 * h
    linear = layers * (attention + mlp)
    other = layers * (norms + biases) + h + vocab * h  # final norm, input embeddings
    tied = c.get("tie_word_embeddings", hf.get("tie_word_embeddings", True))
    return linear + (0 if tied else vocab * h), other


def _batch(experiment: dict[str, Any]) -> int:
    backend = experiment.get("backend", {})
    size = backend.get("batch_size") or backend.get("max_num_seqs") or backend.get("max_batch_size") or 1
    return max(1, min(int(size), int(experiment.get("num_input_prompts") or size)))


def _gpus(experiment: dict[str, Any]) -> int:
    backend = experiment.get("backend", {})
    tp = backend.get("tensor_parallel_size") or backend.get("tp_size") or 1
    pp = backend.get("pipeline_parallel_size") or backend.get("pp_size") or 1
    return max(1, int(tp) * int(pp))


def estimate(experiment: dict[str, Any], hf: dict[str, Any] | None) -> MemoryEstimate:
    """The memory a validated experiment (JSON data) needs, from its model's config."""
    if hf is None:
        return MemoryEstimate(None, None, reason="the model's config.json is not available here")
    counts = parameter_count(hf)
    if counts is None:
        return MemoryEstimate(None, None, reason="this architecture's parameters are not counted")
    linear, other = counts
    backend = experiment.get("backend", {})
    dtype_bytes = _DTYPE_BYTES.get(str(experiment.get("fp_precision")), 4)
    if backend.get("quantization") or hf.get("quantization_config"):
        return MemoryEstimate(None, None, reason="quantised checkpoints and engine quantisation are not estimated")
    linear_bytes = float(dtype_bytes)
    for flag, width in _QUANTISED_BYTES.items():
        if backend.get(flag):
            linear_bytes = width
    weights = int(linear * linear_bytes + other * dtype_bytes)
    arch = architecture(hf) or {}
    kv_heads, head_dim, layers = arch["num_kv_heads"], arch["head_dim"], arch["num_layers"]
    kv_bytes = _KV_DTYPE_BYTES.get(str(backend.get("kv_cache_dtype")), dtype_bytes)
    if backend.get("use_cache") is False:
        kv = 0
    else:
        positions = _batch(experiment) * (int(experiment.get("max_input_tokens", 0)) +
                                          int(experiment.get("max_output_tokens", 0)))
        kv = 2 * layers * kv_heads * head_dim * kv_bytes * positions
    return MemoryEstimate(weights, kv, gpus=_gpus(experiment))


def gpu_memory(nvml_module: Any = None) -> list[tuple[str, int]] | None:
    """(name, total bytes) of each GPU this process can use, or None where NVML sees none."""
    from llem.energy.devices.nvml import DeviceReadError, DeviceUnavailable, NvmlDevices

    try:
        devices = NvmlDevices.open(None, nvml=nvml_module)
    except (DeviceUnavailable, DeviceReadError):
        return None
    except Exception:  # noqa: BLE001 - a broken driver must not stop a dry run; the fit is then not checked
        return None
    try:
        out = []
        for i in devices.indices:
            info = devices.memory_bytes(i)
            if info is not None:
                out.append((str(devices.describe(i).get("name") or devices.label(i)), info.total))
        return out or None
    finally:
        devices.close()


def will_not_fit(estimate_: MemoryEstimate, experiment: dict[str, Any], gpus: list[tuple[str, int]]) -> str | None:
    """Why the job will not fit on the smallest of `gpus`, or None when it fits (or is not estimated)."""
    need = estimate_.per_gpu_bytes
    if need is None or not gpus:
        return None
    if estimate_.gpus > len(gpus):
        return f"needs {estimate_.gpus} GPUs, this machine has {len(gpus)}"
    name, total = min(gpus, key=lambda g: g[1])
    backend = experiment.get("backend", {})
    share = float(backend.get("gpu_memory_utilization") or backend.get("kv_cache_free_gpu_memory_fraction") or 1.0)
    room = int(total * min(share, FIT_MARGIN))
    if need <= room:
        return None
    return f"needs about {gib(need)} per GPU, more than the {gib(room)} usable on {name} ({gib(total)})"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def plan_memory(resolved: dict[str, dict[str, Any]], nvml_module: Any = None
                ) -> tuple[dict[str, MemoryEstimate], dict[str, str], list[tuple[str, int]] | None]:
    """Per configuration (by config hash): the estimate, and why it will not fit on this machine's GPUs."""
    configs: dict[str, dict[str, Any] | None] = {}
    estimates: dict[str, MemoryEstimate] = {}
    for digest, experiment in resolved.items():
        model = experiment.get("model", {})
        key = json.dumps(model, sort_keys=True)
        if key not in configs:
            configs[key] = read_model_config(model)
        estimates[digest] = estimate(experiment, configs[key])
    gpus = gpu_memory(nvml_module)
    misfits = {}
    for digest, est in estimates.items():
        why = will_not_fit(est, resolved[digest], gpus or [])
        if why is not None:
            misfits[digest] = why
    return estimates, misfits, gpus
