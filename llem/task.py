"""The task function every llem job runs: validate (unless its campaign did), then measure with the warm session."""

from __future__ import annotations

import atexit
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from llem.backends.errors import HardwareUnsupported
from llem.backends.registry import BackendUnavailable
from llem.composed import validate_composed
from llem.config import ConfigError
from llem.measure.harness import MeasurementError, run_experiment
from llem.measure.result import ExperimentResult
from llem.measure.session import BackendSession

# One per process: a worker that runs several jobs keeps its model loaded between them.
SESSION = BackendSession()
atexit.register(SESSION.release)  # engines with worker processes (vLLM) shut down cleanly at exit
# Set by a campaign worker before its first job: extra warmup prompts, once per worker.
CAMPAIGN_WARMUP: dict[str, Any] = {}
# Set by a campaign worker before each job a parallel launcher placed: its GPUs and the node's concurrency.
PLACEMENT: dict[str, Any] = {}
# Set by a campaign worker before each job its campaign planned: {"experiment": the validated ExperimentConfig}.
PLANNED: dict[str, Any] = {}

USER_ERRORS = (ConfigError, MeasurementError, HardwareUnsupported, BackendUnavailable)


def _is_single_run() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.RUN
    except ValueError:  # called outside Hydra (tests, workers)
        return False


def _output_dir() -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def summarise(result: ExperimentResult, result_path: Path) -> dict[str, Any]:
    """The small dict a launcher returns for a job (the full record is result.json)."""
    return {
        "result_path": str(result_path),
        "config_hash": result.config_hash,
        "backend": result.backend,
        "output_tokens": result.output_tokens,
        "duration_s": result.duration_s,
        "throughput_tokens_per_s": result.throughput_tokens_per_s,
        "energy_source": result.energy.source,
        "energy_adjusted_j": result.energy.adjusted_j,
        "energy_per_output_token_j": result.energy.per_output_token_j,
        "ttft_ms_p50": result.latency.ttft_ms.p50,
        "itl_ms_p50": result.latency.itl_ms.p50,
        "model_reused": result.model_reused,
        "warnings": len(result.warnings),
        **({"server": server_record(result.serving)} if result.serving is not None else {}),
    }


def server_record(serving: dict[str, Any]) -> dict[str, Any]:
    """Which server a serving job ran against and whether it started it: what the manifest keeps of it."""
    server = serving.get("server") or {}
    return {k: server.get(k) for k in ("id", "started_by_llem", "reused", "started_at", "ready_s", "url")}


def _serving_report(s: dict[str, Any]) -> str:
    def num(value: Any, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    e = s["energy"]
    energy = (f"{num(e['j_per_output_token'], '.5f')} J/token in the steady window" if e["j_per_output_token"]
              is not None else f"energy not measured ({e['unavailable_reason']})")
    checks = "all checks passed" if s["valid"] else f"checks failed: {', '.join(s['failed'])}"
    return (f"serving: {s['completed']}/{s['requests']} requests, {num(s['output_tokens_per_s'], '.1f')} tok/s, "
            f"TTFT p99 {num(s['ttft_ms']['p99'], '.1f')} ms, TPOT p99 {num(s['tpot_ms']['p99'], '.1f')} ms; "
            f"{energy}; {checks}")


def _report(result: ExperimentResult, path: Path) -> None:
    if result.serving is not None:
        print(f"llem: {result.backend} {result.model} {result.fp_precision}: {_serving_report(result.serving)}\n"
              f"llem: result written to {path}", file=sys.stderr)
        for warning in result.warnings:
            print(f"llem: warning: {warning}", file=sys.stderr)
        return
    e = result.energy
    energy = (
        f"{e.adjusted_j:.3f} J above idle ({e.per_output_token_j:.5f} J/token, {e.source})"
        if e.adjusted_j is not None and e.per_output_token_j is not None
        else f"energy not measured ({e.unavailable_reason})"
    )
    print(
        f"llem: {result.backend} {result.model} {result.fp_precision}: {result.output_tokens} tokens in "
        f"{result.duration_s:.3f} s = {result.throughput_tokens_per_s:.1f} tok/s; "
        f"TTFT p50 {result.latency.ttft_ms.p50:.1f} ms; {energy}\nllem: result written to {path}",
        file=sys.stderr,
    )
    for warning in result.warnings:
        print(f"llem: warning: {warning}", file=sys.stderr)


def run_task(cfg: DictConfig) -> Any:
    """Validate the composed config and measure it.

    A job a campaign planned comes with its settings already validated (`PLANNED`), from the config it was
    assembled from: they are not validated again. Any other job validates its config here.

    A user mistake (bad config, unavailable engine or hardware) in a single run ends the
    process with a message and no traceback (exit 2 for config, 1 otherwise); in a
    multirun it fails that job only, so the campaign goes on.
    """
    single = _is_single_run()
    planned = PLANNED.pop("experiment", None)
    try:
        experiment = planned if planned is not None else validate_composed(cfg).experiment
        output_dir = _output_dir()
        warmup = dict(CAMPAIGN_WARMUP)
        CAMPAIGN_WARMUP.clear()
        placement = dict(PLACEMENT) or None
        PLACEMENT.clear()
        result = run_experiment(experiment, output_dir, SESSION, campaign_warmup=warmup or None,
                                placement=placement)
    except USER_ERRORS as error:
        if single:
            print(f"llem: {error}", file=sys.stderr)
            sys.exit(2 if isinstance(error, ConfigError) else 1)
        raise
    path = output_dir / "result.json"
    if single:
        _report(result, path)
    return summarise(result, path)
