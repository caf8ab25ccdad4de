"""TensorRT-LLM's OpenAI-compatible server (`trtllm-serve`) for the serving scenario: its command line.

The server gets the engine an offline TensorRT job would build: same precision, limits, parallelism,
quantisation and KV cache settings. Settings `trtllm-serve` has a flag for go on the command line;
the rest go in the YAML file it reads with `--extra_llm_api_options`, whose keys are the LLM API's
own arguments. That file replaces whole sections of what the flags set (its `build_config` and
`kv_cache_config` are not merged with the flags'), so each section it holds is complete.

`--backend tensorrt` selects the TensorRT-engine LLM the offline backend uses (newer releases default
to the PyTorch flow). The server builds that engine from the checkpoint while it starts, every time:
llem's engine cache is not used, so the build is part of the time to ready, not of the measurement.
Nothing here imports `tensorrt_llm`, so the command can be built and checked on any machine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from llem.atomic import atomic_write_text
from llem.backends.tensorrt.backend import KV_CACHE_QUANT_ALGOS, QUANT_ALGOS
from llem.config import ConfigError, ExperimentConfig, TensorRTConfig
from llem.models.resolve import resolve_model_path

SERVE_MODULE = "tensorrt_llm.commands.serve"  # what the `trtllm-serve` console script runs
OPTIONS_FILE = "trtllm-serve-options.yaml"

# Engine limits with a setting of their own; `backend.build_args` must not set them a second time.
NAMED_BUILD_FIELDS = ("max_batch_size", "max_num_tokens", "max_input_len", "max_seq_len")


class TrtllmServeError(ConfigError, ValueError):
    """An experiment whose settings `trtllm-serve` cannot be started with."""


def _settings(experiment: ExperimentConfig) -> TensorRTConfig:
    backend = experiment.backend
    if not isinstance(backend, TensorRTConfig):
        raise TrtllmServeError(f"trtllm-serve serves backend=tensorrt experiments, not backend={backend.name}")
    return backend


def server_options(experiment: ExperimentConfig) -> dict[str, Any]:
    """The LLM API arguments `trtllm-serve` has no flag for, as its `--extra_llm_api_options` file holds them.

    KV blocks are not reused across requests and the server's dynamic batch-size tuning is off, so the
    engine schedules as the offline backend's does (prefill work is not skipped for repeated prompts,
    and `backend.max_batch_size` is the batch it runs). Chunked prefill asks the LLM API for paged
    context attention in the engine, which that mode needs.
    """
    b = _settings(experiment)
    clash = sorted(set(b.build_args) & set(NAMED_BUILD_FIELDS))
    if clash:
        raise TrtllmServeError(
            "backend.build_args: " + ", ".join(f"{k!r} is set by backend.{k}, not build_args" for k in clash),
            [f"backend.build_args.{k}: use backend.{k}" for k in clash],
        )
    limits = {k: getattr(b, k) for k in NAMED_BUILD_FIELDS if getattr(b, k) is not None}
    options: dict[str, Any] = {
        "dtype": experiment.fp_precision,
        "build_config": {**limits, **b.build_args},
        "kv_cache_config": {"free_gpu_memory_fraction": b.kv_cache_free_gpu_memory_fraction, "enable_block_reuse": False},
        "scheduler_config": {"capacity_scheduler_policy": "GUARANTEED_NO_EVICT", "dynamic_batch_config": None},
    }
    if b.enable_chunked_context:
        options["enable_chunked_prefill"] = True
    quant: dict[str, str] = {}
    if b.quantization is not None:
        quant["quant_algo"] = QUANT_ALGOS[b.quantization]
    if b.kv_cache_dtype in KV_CACHE_QUANT_ALGOS:
        quant["kv_cache_quant_algo"] = KV_CACHE_QUANT_ALGOS[b.kv_cache_dtype]
    if quant:
        options["quant_config"] = quant
    if experiment.model.revision is not None:
        options["revision"] = experiment.model.revision
    return options


def write_server_options(experiment: ExperimentConfig, options_dir: Path) -> Path:
    """Write `server_options` as YAML into `options_dir` (atomically: a server never reads half a file)."""
    try:
        text = yaml.safe_dump(server_options(experiment), sort_keys=False)
    except yaml.YAMLError as exc:
        raise TrtllmServeError(f"backend.build_args: a value cannot be written for trtllm-serve ({exc})") from None
    return atomic_write_text(Path(options_dir) / OPTIONS_FILE, text)


def trtllm_server_argv(
    experiment: ExperimentConfig,
    port: int,
    *,
    options_dir: Path,
    host: str = "127.0.0.1",
    served_name: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The argv that starts `trtllm-serve` for `experiment` on `host:port`; writes its options file first.

    Flags: the model path, `--backend tensorrt`, `--max_batch_size`, `--max_num_tokens` and
    `--max_seq_len` (when set), `--tp_size`, `--pp_size`, `--kv_cache_free_gpu_memory_fraction`,
    `--trust_remote_code` (when set) and `--extra_llm_api_options` naming the file `server_options`
    describes. It runs as `python -m tensorrt_llm.commands.serve` (what the `trtllm-serve` script runs)
    so the server uses this interpreter's environment. The server is ready when `GET /health`
    answers 200.

    `served_name` is not passed: the releases that still have the TensorRT-engine backend have no
    flag for it. The server lists the model under its directory's name (or the id as given) at
    `/v1/models` and answers a request whatever `model` it names, so requests may use `served_name`.
    """
    del served_name  # see the docstring: no flag to pass it with
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    b = _settings(experiment)
    options = write_server_options(experiment, options_dir)
    argv = [python, "-m", SERVE_MODULE, resolve_model_path(experiment.model), "--host", host, "--port", str(port),
            "--backend", "tensorrt", "--max_batch_size", str(b.max_batch_size)]
    if b.max_num_tokens is not None:
        argv += ["--max_num_tokens", str(b.max_num_tokens)]
    if b.max_seq_len is not None:
        argv += ["--max_seq_len", str(b.max_seq_len)]
    argv += ["--tp_size", str(b.tp_size), "--pp_size", str(b.pp_size),
             "--kv_cache_free_gpu_memory_fraction", str(b.kv_cache_free_gpu_memory_fraction)]
    if experiment.model.trust_remote_code:
        argv.append("--trust_remote_code")
    return argv + ["--extra_llm_api_options", str(options)]
