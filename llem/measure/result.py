"""The versioned result.json schema: one measured experiment.

Missing measurements are null with a reason, never 0: a reader must be able to tell
"measured nothing" from "could not measure".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llem.atomic import atomic_write_text
from llem.measure.verdict import Verdict
from llem.measure.gpu_settings_result import GpuSettingsEntry

SCHEMA_VERSION = "2.3"  # 2.3: `serving` (scenario=serving)
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
    """One clock for every engine: each prompt arrives at the start of its pass of the window."""

    ttft_ms: Distribution = Field(description="Time to first token: first token on the host minus arrival.")
    itl_ms: Distribution = Field(description="Inter-token latency: gaps between consecutive tokens of one request.")
    e2e_ms: Distribution = Field(description="End to end: last token on the host minus arrival.")
    queue_ms: Distribution = Field(description="Waiting: when the engine first scheduled the prompt minus arrival.")
    prefill_ms: Distribution = Field(description="The engine's own time to first token: first token minus scheduled.")
    method: str
    unavailable: dict[str, str] = Field(default_factory=dict, description="Why a distribution is empty.")


class EnergyComponent(_ResultModel):
    """Energy of one kind of device (GPUs, CPU packages, DRAM) over the window."""

    source: str
    devices: list[str]
    total_j: float | None
    baseline_power_w: float | None = None
    adjusted_j: float | None = None
    per_device: dict[str, float | None] = Field(default_factory=dict)
    polled_j: float | None = Field(None, description="Integrated polled power over the same window (cross-check).")
    polled_source: str | None = Field(None, description="`instant` (NVML_FI_DEV_POWER_INSTANT) or `average`.")
    unavailable_reason: str | None = None


class Energy(_ResultModel):
    source: str = Field(description="What was measured, e.g. `nvml+rapl`, `nvml`, `rapl`, `none`.")
    total_j: float | None = Field(description="Sum of the measured components over the whole window.")
    baseline_power_w: float | None
    adjusted_j: float | None = Field(description="total_j minus baseline power x duration; null if it would be < 0.")
    per_output_token_j: float | None
    per_pass_j: float | None = Field(None, description="adjusted_j / passes.")
    components: dict[str, EnergyComponent | None] = Field(
        default_factory=dict, description="`gpu`, `cpu`, `dram`: each measured component, or null (see scope)."
    )
    scope: dict[str, Any] = Field(default_factory=dict, description="What was included, on which devices, and why "
                                  "anything was left out.")
    update_periods_s: dict[str, float | None] = Field(
        default_factory=dict, description="Measured update period of each GPU's energy counter."
    )
    polled_total_j: float | None = None
    polled_source: str | None = None
    baseline: dict[str, Any] | None = Field(
        None, description="How the idle baseline was taken: key, duration, settle time, device state, reuse."
    )
    baseline_unavailable_reason: str | None = None
    unavailable_reason: str | None = None


class Flops(_ResultModel):
    total: float | None
    per_output_token: float | None
    per_pass: float | None = None
    method: str


class Memory(_ResultModel):
    """Memory figures that mean the same on every engine; each null has a reason in `unavailable`."""

    weights_bytes: int | None = Field(description="Model weights as held in memory.")
    kv_cache_peak_bytes: int | None = Field(None, description="Most KV cache holding tokens at once in the window.")
    weights_kv_peak_bytes: int | None = Field(
        None, description="weights_bytes + kv_cache_peak_bytes: the model state the workload needed (the comparable one)."
    )
    peak_allocated_bytes: int | None = Field(
        description="Peak over the window of weights + activations + KV cache actually used, where the engine's "
        "allocator can tell."
    )
    reserved_bytes: int | None = Field(description="Memory the engine reserved as its pool.")
    host_peak_rss_bytes: int | None = Field(None, description="Peak resident memory of the host processes.")
    comparable: str = Field("weights_kv_peak_bytes", description="The figure summaries and reports compare.")
    methods: dict[str, str] = Field(default_factory=dict)
    unavailable: dict[str, str] = Field(default_factory=dict)


class Phase(_ResultModel):
    """One phase of generation (prefill or decode), per the main window's passes."""

    duration_s: float | None
    tokens: int
    energy_j: float | None = Field(description="Energy above idle attributed to the phase.")
    per_token_j: float | None
    per_token_ms: float | None
    tokens_per_s: float | None
    unavailable_reason: str | None = None


class Placement(_ResultModel):
    """Set by a launcher that packs jobs onto a node's GPUs (`hydra.launcher.parallel`)."""

    gpus: list[str] = Field(description="UUIDs of the GPUs the job was pinned to (CUDA_VISIBLE_DEVICES).")
    gpu_indices: list[int] = Field(description="Their NVML indices on the node.")
    parallel: bool = Field(description="Whether other jobs could run on the node at the same time.")
    concurrent_jobs: int = Field(
        description="Jobs of this campaign running on the node when this one started, itself included."
    )


class Quality(_ResultModel):
    """Whether the figures can be used as they stand, for machines to filter on."""

    status: Literal["ok", "warn", "fail"] = Field(
        description="`fail`: a figure the job needs is missing (see `failures`); `warn`: see `warnings`; else `ok`."
    )
    failures: list[str] = Field(default_factory=list, description="Why the status is `fail`.")


class ExperimentResult(_ResultModel):
    schema_version: str = SCHEMA_VERSION
    experiment_name: str | None = None
    config_hash: str
    backend: str
    model: str
    fp_precision: str
    config: dict[str, Any]
    passes: int = Field(description="Times the measured workload ran in the window (until min_window_seconds).")
    num_prompts: int = Field(description="Prompts generated in the window, all passes together.")
    input_tokens: int
    output_tokens: int
    duration_s: float
    throughput_tokens_per_s: float | None
    requests_per_s: float | None
    latency: Latency
    energy: Energy
    flops: Flops
    memory: Memory
    prefill: Phase | None = Field(None, description="Prefill-only pass(es) measured in their own window.")
    decode: Phase | None = Field(None, description="Main window minus prefill.")
    phase_split: dict[str, Any] = Field(default_factory=dict)
    model_load_s: float | None = Field(description="Load time in this experiment; null when the model was reused.")
    model_reused: bool
    warmup: dict[str, Any]
    engine_settings: dict[str, Any]
    environment: dict[str, Any]
    timeseries_file: str | None
    placement: Placement | None = Field(
        None, description="Where the launcher ran the job: its GPUs and how many jobs ran on the node at once."
    )
    gpu_settings: dict[str, GpuSettingsEntry] | None = Field(
        None, description="Power limit and clocks llem set on each of the job's GPUs (null: `gpu.*` unset, untouched)."
    )
    started_at: str
    completed_at: str
    warnings: list[str]
    quality: Quality | None = Field(None, description="ok / warn / fail, with the failures; null before schema 2.2.")
    verdict: Verdict | None = Field(
        None, description="pass / warn / fail with the rules that tripped (see docs/validity.md); null before schema 2.2."
    )
    serving: dict[str, Any] | None = Field(
        None, description="scenario=serving: the load point's latency, throughput, steady window, energy figures "
        "and checks (see docs/serving.md); null for offline experiments and before schema 2.3."
    )


def write_result(result: ExperimentResult, output_dir: Path) -> Path:
    """Write result.json atomically; a half-written file never exists under the final name."""
    return atomic_write_text(Path(output_dir) / RESULT_FILENAME, result.model_dump_json(indent=2) + "\n")


def experiment_fields(experiment: Any) -> dict[str, Any]:
    """The fields every result takes from its validated experiment, offline or serving alike."""
    from llem.config.hashing import config_hash

    return {
        "experiment_name": experiment.experiment_name,
        "config_hash": config_hash(experiment),
        "backend": experiment.backend.name,
        "model": experiment.model.name,
        "fp_precision": experiment.fp_precision,
        "config": experiment.model_dump(mode="json"),
    }


def judge_and_write(result: ExperimentResult, output_dir: Path, telemetry: Any = None) -> ExperimentResult:
    """Give the finished result its verdict (from its own figures and the window's telemetry), then write it."""
    from llem.measure.verdict import judge

    result.verdict = judge(result.model_dump(mode="json"), telemetry)
    write_result(result, output_dir)
    return result


def read_result(path: Path) -> ExperimentResult:
    """Load and validate a result.json (raises on a truncated or foreign file)."""
    return ExperimentResult.model_validate_json(Path(path).read_text())
