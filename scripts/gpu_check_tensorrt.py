#!/usr/bin/env python3
"""Run one tiny experiment through llem's harness with backend=tensorrt on an NVIDIA GPU machine.

Builds (or loads from the engine cache) a TensorRT engine for the built-in tiny model, measures
a short forced-length workload and prints the result summary. A second, cold-started run shows
that the engine comes from the cache. Exit status: 0 ok, 2 this machine cannot run TensorRT-LLM.

    python scripts/gpu_check_tensorrt.py --out /tmp/llem-trt --prompts 8 --max-output-tokens 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

try:
    import llem  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem.backends.errors import HardwareUnsupported
from llem.config import ExperimentConfig
from llem.measure.harness import run_experiment
from llem.measure.session import BackendSession
from llem.task import summarise


def _experiment(args: argparse.Namespace) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "experiment_name": "gpu-check-tensorrt",
            "model": {"name": args.model},
            "fp_precision": args.precision,
            "num_input_prompts": args.prompts,
            "max_input_tokens": 64,
            "max_output_tokens": args.max_output_tokens,
            "warmup": {"num_prompts": 2},
            "baseline": {"duration_seconds": 2.0},
            "backend": {
                "name": "tensorrt",
                "max_batch_size": args.prompts,
                "max_input_len": 64,
                "max_seq_len": 64 + args.max_output_tokens,
                "kv_cache_free_gpu_memory_fraction": 0.3,
                **({"engine_cache_dir": args.engine_cache_dir} if args.engine_cache_dir else {}),
            },
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--precision", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    parser.add_argument("--engine-cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=None, help="result directory (default: a temporary one)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="llem-trt-check-"))
    experiment = _experiment(args)
    session = BackendSession()
    try:
        for run, cold in (("first", False), ("cached", True)):
            result = run_experiment(experiment, out / run, session, force_cold_start=cold)
            summary = summarise(result, out / run / "result.json")
            summary.update(
                engine_cache=result.engine_settings.get("engine_cache"),
                build_s=result.engine_settings.get("build_s"),
                model_load_s=result.model_load_s,
                itl_count=result.latency.itl_ms.count,
                memory=result.memory.model_dump(include={"weights_bytes", "kv_cache_peak_bytes", "reserved_bytes"}),
                stop_token_ids=result.engine_settings.get("stop_token_ids"),
                queue_ms=result.latency.queue_ms.model_dump(),
            )
            print(json.dumps({run: summary}, indent=2, default=str))
            expected = args.prompts * args.max_output_tokens
            if result.output_tokens != expected:
                print(f"forced length not honoured: {result.output_tokens} != {expected}", file=sys.stderr)
                return 1
    except HardwareUnsupported as error:
        print(f"gpu_check_tensorrt: {error}", file=sys.stderr)
        return 2
    finally:
        session.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
