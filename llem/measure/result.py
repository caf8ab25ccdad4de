"""The versioned result.json schema: one measured experiment.

Missing measurements are null with a reason, never 0: a reader must be able to tell
"measured nothing" from "could not measure".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llem.atomic import atomic_write_text

SCHEMA_VERSION = "1.0"
RESULT_FILENAME = "result.json"
TIMESERIES_FILENAME = "timeseries.parquet"


class _ResultModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Distribution(_ResultModel):
    """Summary of a set of latency samples in milliseconds."""

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None


class Latency(_ResultModel):
    ttft_ms: Distribution = Field(description="Time to first token, from the start of the prompt's batch.")
    itl_ms: Distribution = Field(description="Inter-token latency: gaps between consecutive tokens.")
    e2e_ms: Distribution = Field(description="From the start of the prompt's batch to its last token.")
    method: str


class Energy(_ResultModel):
    source: str = Field(description="nvml | nvml_polling | rapl | none")
    total_j: float | None
    baseline_power_w: float | None
    adjusted_j: float | None
    per_output_token_j: float | None
    per_device: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    polled_total_j: float | None = None
    baseline_unavailable_reason: str | None = None
    unavailable_reason: str | None = None


class Flops(_ResultModel):
    total: float | None
    per_output_token: float | None
    method: str


class Memory(_ResultModel):
    peak_bytes: int | None
    reserved_peak_bytes: int | None = None
    model_bytes: int | None
    method: str | None
    unavailable_reason: str | None = None


class ExperimentResult(_ResultModel):
    schema_version: str = SCHEMA_VERSION
    experiment_name: str | None = None
    config_hash: str
    backend: str
    model: str
    fp_precision: str
    config: dict[str, Any]
    num_prompts: int
    input_tokens: int
    output_tokens: int
    duration_s: float
    throughput_tokens_per_s: float | None
    requests_per_s: float | None
    latency: Latency
    energy: Energy
    flops: Flops
    memory: Memory
    model_load_s: float | None = Field(description="Load time in this experiment; null when the model was reused.")
    model_reused: bool
    warmup: dict[str, Any]
    engine_settings: dict[str, Any]
    environment: dict[str, Any]
    timeseries_file: str | None
    started_at: str
    completed_at: str
    warnings: list[str]


def write_result(result: ExperimentResult, output_dir: Path) -> Path:
    """Write result.json atomically; a half-written file never exists under the final name."""
    return atomic_write_text(Path(output_dir) / RESULT_FILENAME, result.model_dump_json(indent=2) + "\n")


def read_result(path: Path) -> ExperimentResult:
    """Load and validate a result.json (raises on a truncated or foreign file)."""
    return ExperimentResult.model_validate_json(Path(path).read_text())
