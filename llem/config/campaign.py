"""Campaign models: how many experiments, in which order, on what schedule, kept where.

A campaign is a grid (backends x shared axes x per-backend axes), explicit
experiments, and/or a list of experiment YAML files, plus execution settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llem.config._base import StrictModel
from llem.config.backends import BACKEND_NAMES

__all__ = [
    "CampaignColdStartConfig",
    "CampaignConfig",
    "CampaignDaemonConfig",
    "CampaignExecutionConfig",
    "CampaignExplicitExperiment",
    "CampaignGridConfig",
    "CampaignHealthCheckConfig",
    "CampaignIOConfig",
    "CampaignScheduleConfig",
    "CampaignSettings",
    "parse_duration",
    "validate_hhmm",
]

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([hms])$")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def validate_hhmm(value: str | None) -> str | None:
    """A wall-clock time as zero-padded 24-hour HH:MM (e.g. 03:30)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _HHMM.match(value):
        raise ValueError(f"expected a time as HH:MM in 24-hour form (e.g. '03:30'), got {value!r}")
    return value


def parse_duration(value: str) -> float:
    """Seconds in a duration written as 'Nh', 'Nm' or 'Ns' (e.g. '2h', '30m', '2s')."""
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"expected a duration such as '2h', '30m' or '45s', got {value!r}")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


class CampaignExecutionConfig(StrictModel):
    """How often and in which order the campaign's experiments run."""

    cycles: int = Field(3, ge=1, le=20, description="Repetitions of the whole experiment set (for statistics).")
    structure: Literal["interleaved", "shuffled", "grouped"] = Field(
        "interleaved",
        description="grouped: A x n, B x n; interleaved: A, B, C, A, B, C; shuffled: a new seeded order each cycle.",
    )
    shuffle_seed: int | None = Field(
        None, description="Seed of the shuffled order (null: chosen at plan time and recorded in the manifest)."
    )
    warmup_prompts: int = Field(5, ge=0, description="Prompts run once per worker before its first experiment.")
    warmup_timeout_seconds: float = Field(300.0, gt=0, description="Give up on the worker warmup after this long.")
    experiment_timeout_seconds: float | None = Field(
        None, gt=0, description="Fail an experiment that runs longer than this (null: no limit)."
    )
    config_gap_seconds: float = Field(60.0, ge=0, description="Idle pause between experiments (lets the GPU cool).")
    cycle_gap_seconds: float = Field(300.0, ge=0, description="Idle pause between cycles.")


class CampaignScheduleConfig(StrictModel):
    """Older one-shot schedule: start the campaign at a wall-clock time."""

    at: str | None = Field(None, description="Local start time, HH:MM (24-hour).")

    @field_validator("at")
    @classmethod
    def _check_at(cls, value: str | None) -> str | None:
        return validate_hhmm(value)


class CampaignGridConfig(StrictModel):
    """A cartesian grid: for each backend, models x shared axes x that backend's own axes."""

    backends: list[str] = Field(..., min_length=1, description="Backends to sweep: pytorch, vllm, tensorrt.")
    models: list[str] | None = Field(None, description="Model names to sweep (null: the config's model).")
    shared: dict[str, list[Any]] = Field(
        default_factory=dict, description="Axes applied to every backend, e.g. fp_precision: [float16, bfloat16]."
    )
    backend_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-backend axes keyed by backend name, e.g. pytorch: {batch_size: [1, 4]}.",
    )

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        unknown = [b for b in value if b not in BACKEND_NAMES]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; expected any of {list(BACKEND_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError(f"backends lists a backend twice: {value}")
        return value

    @field_validator("shared")
    @classmethod
    def _non_empty_axes(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [k for k, v in value.items() if len(v) == 0]
        if empty:
            raise ValueError(f"shared axes {empty} have no values")
        return value

    @model_validator(mode="after")
    def _overrides_for_listed_backends(self) -> "CampaignGridConfig":
        stray = [k for k in self.backend_overrides if k not in self.backends]
        if stray:
            raise ValueError(
                f"backend_overrides has key(s) {stray} that are not in backends {self.backends}"
            )
        return self


class CampaignExplicitExperiment(StrictModel):
    """One hand-picked experiment: an experiment YAML plus inline overrides."""

    config: str = Field(..., min_length=1, description="Path to an experiment YAML file.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted keys applied on top of the YAML, e.g. backend.batch_size: 4."
    )


class CampaignHealthCheckConfig(StrictModel):
    """Periodic worker health checks (GPU memory, responsiveness) and restarts."""

    enabled: bool = Field(True, description="Run health checks.")
    interval_experiments: int = Field(0, ge=0, description="Check every N experiments (0: once per cycle).")
    gpu_memory_threshold_pct: float = Field(
        90.0, ge=50.0, le=100.0, description="GPU memory use above which a worker is unhealthy."
    )
    restart_on_failure: bool = Field(True, description="Restart an unhealthy worker or container.")
    max_restarts: int = Field(3, ge=0, description="Most restarts per campaign before its backend's jobs fail.")


class CampaignColdStartConfig(StrictModel):
    """Whether experiments may reuse a loaded model."""

    force_cold_start: bool = Field(False, description="Unload the model and free device memory between experiments.")
    restart_container: bool = Field(False, description="Restart the worker (container) before every experiment.")


class CampaignDaemonConfig(StrictModel):
    """Run the campaign repeatedly on a schedule."""

    enabled: bool = Field(False, description="Repeat the campaign on a schedule.")
    at: str | None = Field(None, description="Local time of the first start, HH:MM (null: now).")
    interval: str | None = Field(None, description="Wait between repetitions, e.g. '6h', '30m', '2s'.")
    total_duration: str | None = Field(
        None, description="Stop starting repetitions after this long since the first start, e.g. '24h'."
    )
    quiet: bool = Field(True, description="Plain log lines instead of interactive progress.")

    @field_validator("at")
    @classmethod
    def _check_at(cls, value: str | None) -> str | None:
        return validate_hhmm(value)

    @field_validator("interval", "total_duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def interval_seconds(self) -> float | None:
        return None if self.interval is None else parse_duration(self.interval)

    @property
    def total_duration_seconds(self) -> float | None:
        return None if self.total_duration is None else parse_duration(self.total_duration)


class CampaignIOConfig(StrictModel):
    """Where a campaign keeps its files (relative paths are under the sweep dir)."""

    results_dir: str = Field("results", description="Aggregated results.")
    configs_dir: str = Field("configs", description="Generated standalone experiment YAMLs, one per job.")
    state_dir: str = Field(".state", description="Manifest and locks.")
    manifest_filename: str = Field("campaign_manifest.json", description="File name of the manifest.")

    @property
    def manifest_path(self) -> Path:
        return Path(self.state_dir) / self.manifest_filename


class CampaignSettings(StrictModel):
    """How a multirun's jobs run (cycles, gaps, health checks, files), with or without a job definition.

    Every multirun has these settings, so `campaign.execution.cycles=1` works on any
    command line; a `CampaignConfig` adds what to run.
    """

    campaign_name: str | None = Field(None, description="Name recorded in the manifest and results.")
    configs: list[str] = Field(default_factory=list, description="Experiment YAML files, each one job.")
    grid: CampaignGridConfig | None = Field(None, description="Cartesian grid of experiments.")
    experiments: list[CampaignExplicitExperiment] = Field(
        default_factory=list, description="Explicit experiments: YAML plus overrides."
    )
    execution: CampaignExecutionConfig = Field(
        default_factory=CampaignExecutionConfig, description="Cycles, order and gaps."
    )
    schedule: CampaignScheduleConfig = Field(
        default_factory=CampaignScheduleConfig, description="One-shot start time (older files)."
    )
    health_check: CampaignHealthCheckConfig = Field(
        default_factory=CampaignHealthCheckConfig, description="Worker health checks."
    )
    cold_start: CampaignColdStartConfig = Field(
        default_factory=CampaignColdStartConfig, description="Model reuse between experiments."
    )
    daemon: CampaignDaemonConfig | None = Field(
        default_factory=CampaignDaemonConfig, description="Repeat on a schedule (daemon.enabled=true)."
    )
    io: CampaignIOConfig = Field(default_factory=CampaignIOConfig, description="Where files go.")

    @property
    def defines_jobs(self) -> bool:
        """Whether this campaign says what to run (configs, grid or experiments)."""
        return bool(self.configs or self.grid is not None or self.experiments)

    @field_validator("configs")
    @classmethod
    def _configs_exist(cls, value: list[str]) -> list[str]:
        missing = [p for p in value if not Path(p).is_file()]
        if missing:
            raise ValueError(f"experiment config file(s) not found: {missing}")
        return value


class CampaignConfig(CampaignSettings):
    """A whole campaign: what to run (grid, experiments, configs) and how."""

    campaign_name: str = Field(..., min_length=1, description="Name recorded in the manifest and results.")

    @model_validator(mode="after")
    def _something_to_run(self) -> "CampaignConfig":
        if not self.defines_jobs:
            raise ValueError("a campaign needs at least one of: configs, grid, experiments")
        return self
