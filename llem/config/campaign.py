"""Campaign models: how many experiments, in which order, on what schedule, kept where.

A campaign is a grid (backends x shared axes x per-backend axes), explicit
experiments, and/or a list of experiment YAML files, plus execution settings. The
models accept LLenergyMeasure's campaign files key for key (campaign-wide `model`,
`dataset`, `num_samples`, `schedule.days`, `group_by`), so those files run unchanged.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import zoneinfo
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from llem.config._base import StrictModel
from llem.config.backends import BACKEND_NAMES
from llem.config.errors import describe_errors
from llem.config.experiment import DatasetConfig

__all__ = [
    "CampaignColdStartConfig",
    "CampaignConfig",
    "CampaignDaemonConfig",
    "CampaignExecutionConfig",
    "CampaignExplicitExperiment",
    "CampaignGridConfig",
    "CampaignHealthCheckConfig",
    "CampaignIOConfig",
    "CampaignNotificationsConfig",
    "CampaignReportConfig",
    "CampaignScheduleConfig",
    "CampaignSettings",
    "WEEKDAYS",
    "campaign_id",
    "parse_days",
    "parse_duration",
    "validate_hhmm",
    "validate_timezone",
]

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_GROUPS: dict[str, tuple[str, ...]] = {"weekdays": WEEKDAYS[:5], "weekends": WEEKDAYS[5:], "daily": WEEKDAYS}
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

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


def campaign_id(name: str) -> str:
    """A short stable id for a campaign name: the first 8 hex digits of its MD5 (as LLenergyMeasure's)."""
    return hashlib.md5(name.encode("utf-8")).hexdigest()[:8]


def parse_days(value: Any) -> list[str] | None:
    """Days as sorted three-letter names: `[mon, wed]`, `weekdays`, `weekends`, `daily` or full names."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"expected a list of days such as [mon, wed] or 'weekdays', got {value!r}")
    days: set[str] = set()
    known = [*WEEKDAYS, *_DAY_GROUPS, *_FULL_DAY_NAMES]
    for item in items:
        name = str(item).strip().lower()
        if name in _DAY_GROUPS:
            days.update(_DAY_GROUPS[name])
        elif name in WEEKDAYS:
            days.add(name)
        elif name in _FULL_DAY_NAMES:
            days.add(WEEKDAYS[_FULL_DAY_NAMES.index(name)])
        else:
            close = difflib.get_close_matches(name, known, n=2)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown day {item!r}: use mon..sun, weekdays, weekends or daily{hint}")
    if not days:
        raise ValueError("days is empty: the campaign would never start (null: any day)")
    return [d for d in WEEKDAYS if d in days]


@lru_cache(maxsize=1)
def _zone_names() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


def validate_timezone(value: str | None) -> str | None:
    """An IANA time zone name such as 'Europe/London' (null: the machine's local time)."""
    if value is None:
        return None
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        close = difflib.get_close_matches(value, _zone_names(), n=2) if isinstance(value, str) else []
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown time zone {value!r}: use an IANA name such as 'Europe/London'{hint}") from None
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
    structure: Literal["interleaved", "shuffled", "grouped", "reverse", "latin_square"] = Field(
        "interleaved",
        description="grouped: A x n, B x n; interleaved: A, B, C, A, B, C; shuffled: a new seeded order each cycle; "
        "reverse: A, B, C, C, B, A; latin_square: a Williams design (each position once, each precedence equally "
        "often).",
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
    max_consecutive_failures: int | None = Field(
        None, ge=1, description="After this many failed jobs in a row, pause, then probe one job: a failure stops "
        "the campaign (null: never).",
    )
    circuit_breaker_cooldown_seconds: float = Field(
        300.0, ge=0, description="Pause before the probe job once max_consecutive_failures is reached."
    )
    wall_clock_timeout_hours: float | None = Field(
        None, gt=0, description="Stop this run, as an interrupt does, after this many hours (null: no limit)."
    )


class CampaignScheduleConfig(StrictModel):
    """When the campaign may start: a one-shot start time, the days it may start on, and the time zone.

    `days` and `timezone` also govern the daemon: its repetitions start only on these days.
    """

    at: str | None = Field(None, description="Start time, HH:MM (24-hour), in `timezone` (null: now).")
    days: list[str] | None = Field(
        None,
        description="Days a run may start on: e.g. [mon, wed], weekdays, weekends (null: any day). Also limits "
        "the daemon's repetitions.",
    )
    timezone: str | None = Field(
        None, description="IANA time zone of `at`, `daemon.at` and `days`, e.g. Europe/London (null: local time)."
    )

    @field_validator("at")
    @classmethod
    def _check_at(cls, value: str | None) -> str | None:
        return validate_hhmm(value)

    @field_validator("days", mode="before")
    @classmethod
    def _check_days(cls, value: Any) -> list[str] | None:
        return parse_days(value)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        return validate_timezone(value)

    @property
    def restricts_start(self) -> bool:
        """Whether a run waits for a time or a day instead of starting now."""
        return self.at is not None or self.days is not None


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
    variants: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Alternatives crossed with the other axes, for settings that only make sense together: each a "
        "dict of keys to values (a list is a small axis of its own; {} is the plain variant; `backend: <name>` "
        "limits one to a backend).",
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

    @field_validator("variants")
    @classmethod
    def _variant_shapes(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, variant in enumerate(value):
            empty = [k for k, v in variant.items() if isinstance(v, list) and not v]
            if empty:
                raise ValueError(f"variants[{index}]: {empty} have no values")
            backends = variant.get("backend")
            names = backends if isinstance(backends, list) else [backends] if backends is not None else []
            unknown = [b for b in names if b not in BACKEND_NAMES]
            if unknown:
                raise ValueError(f"variants[{index}].backend: unknown backend(s) {unknown}; expected any of "
                                 f"{list(BACKEND_NAMES)}")
        seen: dict[str, int] = {}
        for index, variant in enumerate(value):
            key = repr(sorted(variant.items(), key=lambda kv: kv[0]))
            if key in seen:
                raise ValueError(f"variants[{index}] repeats variants[{seen[key]}]")
            seen[key] = index
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
    """One hand-picked experiment: an experiment YAML plus inline overrides (or the overrides alone)."""

    config: str | None = Field(
        None, min_length=1, description="Path to an experiment YAML file (null: the overrides on the primary config)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted keys applied on top of the YAML, e.g. backend.batch_size: 4."
    )

    @model_validator(mode="after")
    def _something_to_run(self) -> "CampaignExplicitExperiment":
        if self.config is None and not self.overrides:
            raise ValueError("give config (an experiment YAML), overrides, or both")
        return self


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
    at: str | None = Field(
        None, description="Time of the first start, HH:MM, in schedule.timezone (null: schedule.at, else now)."
    )
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


class _DatasetSection(StrictModel):
    """A full `dataset` section given as a campaign-wide prompt source (validated like an experiment's)."""

    dataset: DatasetConfig


class CampaignNotificationsConfig(StrictModel):
    """Webhook notifications: a JSON POST per finished job and at the end of the campaign.

    Give the URL through `webhook_url_env` (the name of an environment variable) so a secret
    URL stays out of configs, manifests and logs; it is read when each notification is sent.
    """

    webhook_url: str | None = Field(
        None, description="http(s) URL to POST events to (written into the multirun's config: prefer webhook_url_env)."
    )
    webhook_url_env: str | None = Field(
        None, description="Name of an environment variable holding the URL, read at send time."
    )
    on_complete: bool = Field(True, description="Send an event when a job completes.")
    on_failure: bool = Field(True, description="Send an event when a job fails.")
    on_campaign_end: bool = Field(True, description="Send an event when the campaign ends.")
    timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Give up on one notification after this long; never delays the campaign more."
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("webhook_url_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"expected the name of an environment variable (e.g. LLEM_WEBHOOK_URL), got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "CampaignNotificationsConfig":
        if self.webhook_url is not None and self.webhook_url_env is not None:
            raise ValueError("give webhook_url or webhook_url_env, not both")
        return self

    @property
    def enabled(self) -> bool:
        return self.webhook_url is not None or self.webhook_url_env is not None


class CampaignReportConfig(StrictModel):
    """Factors `python -m llem.report` turns energy into emissions and cost with; no defaults (a guess is no figure).

    A value given on the report's command line wins over the one here; the report names each one's source.
    """

    carbon_intensity: float | None = Field(
        None, ge=0.0, allow_inf_nan=False, description="Grid carbon intensity in gCO2e/kWh (null: no emissions shown)."
    )
    pue: float | None = Field(
        None, ge=1.0, allow_inf_nan=False,
        description="Facility power usage effectiveness applied to device energy (null: device energy only).",
    )  # fmt: skip
    price_per_kwh: float | None = Field(
        None, ge=0.0, allow_inf_nan=False, description="Electricity price per kWh (null: no cost shown)."
    )


class CampaignSettings(StrictModel):
    """How a multirun's jobs run (cycles, gaps, health checks, files), with or without a job definition.

    Every multirun has these settings, so `campaign.execution.cycles=1` works on any
    command line; a `CampaignConfig` adds what to run.
    """

    campaign_name: str | None = Field(None, description="Name recorded in the manifest and results.")
    file: str | None = Field(
        None,
        description="A campaign YAML (llem's or LLenergyMeasure's format) to load; command-line campaign.* "
        "overrides win over it, and its relative paths are resolved from its own directory.",
    )
    model: str | None = Field(
        None,
        description="Default model of every job: a `model` config-group option or a Hugging Face id / path "
        "(jobs that choose a model keep theirs).",
    )
    dataset: str | dict[str, Any] | None = Field(
        None,
        description="Prompt source of every job: a `dataset` option (builtin, synthetic), a known alias "
        "(ai_energy_score, alpaca, gsm8k, mmlu), a .txt/.jsonl file, a Hugging Face id, or a full dataset section.",
    )
    num_samples: int | None = Field(None, ge=1, description="Prompts per job (num_input_prompts) for every job.")
    group_by: list[str] = Field(
        default_factory=list,
        description="Keys the summary and report statistics are grouped by, e.g. [backend, fp_precision] "
        "(empty: by the swept keys, one group per configuration).",
    )
    dedup: Literal["resolved", "none"] = Field(
        "resolved",
        description="resolved: configurations with equal effective engine settings (dormant fields and known engine "
        "defaults resolved) run once; none: every configuration runs.",
    )
    configs: list[str] = Field(default_factory=list, description="Experiment YAML files, each one job.")
    grid: CampaignGridConfig | None = Field(None, description="Cartesian grid of experiments.")
    experiments: list[CampaignExplicitExperiment] = Field(
        default_factory=list, description="Explicit experiments: YAML plus overrides."
    )
    execution: CampaignExecutionConfig = Field(
        default_factory=CampaignExecutionConfig, description="Cycles, order and gaps."
    )
    schedule: CampaignScheduleConfig = Field(
        default_factory=CampaignScheduleConfig,
        description="When runs may start: a start time, allowed days and the time zone (also for the daemon).",
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
    notifications: CampaignNotificationsConfig = Field(
        default_factory=CampaignNotificationsConfig, description="Webhook events for jobs and the campaign's end."
    )
    report: CampaignReportConfig = Field(
        default_factory=CampaignReportConfig,
        description="Carbon intensity, PUE and price the report uses when its command line does not give them.",
    )

    @field_validator("schedule", "notifications", "report", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("dataset is empty")
            return value.strip()
        if isinstance(value, dict):
            try:
                return _DatasetSection.model_validate({"dataset": value}).dataset.model_dump(mode="json")
            except ValidationError as error:
                problems = [
                    p.removeprefix("dataset.").removeprefix("dataset: ")
                    for p in describe_errors(_DatasetSection, error)
                ]
                raise ValueError("; ".join(problems)) from None
        return value

    @field_validator("group_by", mode="before")
    @classmethod
    def _group_by_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("group_by")
    @classmethod
    def _distinct_group_keys(cls, value: list[str]) -> list[str]:
        blank = [k for k in value if not k.strip()]
        if blank:
            raise ValueError("group_by has an empty key")
        if len(set(value)) != len(value):
            raise ValueError(f"group_by lists a key twice: {value}")
        return value

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

    @property
    def campaign_id(self) -> str:
        return campaign_id(self.campaign_name)

    @model_validator(mode="after")
    def _something_to_run(self) -> "CampaignConfig":
        if not self.defines_jobs:
            raise ValueError("a campaign needs at least one of: configs, grid, experiments")
        return self
