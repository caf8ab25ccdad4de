"""From command line and campaign to a validated, ordered job list (nothing runs here)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from llem.config import ConfigError, ExperimentConfig, validate_or_raise
from llem.config.campaign import CampaignSettings, campaign_id
from llem.config.errors import Problem, invalid_message
from llem.config.hashing import canonical_json, config_hash
from llem.plan.campaign_file import CampaignOrigin
from llem.plan.compose import ComposeError
from llem.plan.expand import Axis, PlannedConfig, expand, override_key
from llem.plan.manifest import CampaignManifest, Duplicate, ManifestJob, utc_now
from llem.plan.effective import Equivalents, dormant_notes
from llem.plan.order import order_note, run_order

NON_EXPERIMENT_KEYS = ("campaign", "hydra")


@dataclass
class PlannedJob:
    """One job of the plan: a configuration in one cycle, or an invalid configuration."""

    job_num: int
    config: PlannedConfig
    cycle: int
    config_hash: str | None
    status: str = "pending"
    error: str | None = None


@dataclass
class Plan:
    jobs: list[PlannedJob]
    settings: CampaignSettings
    shuffle_seed: int | None
    swept_keys: list[str]
    duplicates: list[Duplicate] = field(default_factory=list)
    planned_configs: int = 0
    resolved: dict[str, dict[str, Any]] = field(default_factory=dict)  # config hash -> validated experiment, as data
    experiments: dict[str, ExperimentConfig] = field(default_factory=dict)  # config hash -> validated experiment
    notes: list[str] = field(default_factory=list)  # plan-time warnings (an unbalanced order, dormant fields)

    @property
    def runnable(self) -> list[PlannedJob]:
        return [j for j in self.jobs if j.status == "pending"]

    @property
    def invalid(self) -> list[PlannedJob]:
        return [j for j in self.jobs if j.status == "invalid"]

    def counts_by_backend(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for job in self.jobs:
            per = out.setdefault(job.config.backend, {})
            per[job.status] = per.get(job.status, 0) + 1
        return out

    def plan_hash(self) -> str:
        """Identity of the job set and its order: what a resume compares."""
        items = [(j.config_hash, j.cycle, list(j.config.overrides)) for j in self.runnable]
        return hashlib.sha256(canonical_json(items).encode()).hexdigest()[:16]


def _validate(
    config: PlannedConfig,
    compose: Callable[[list[str]], dict[str, Any]],
    label: str,
    campaign: CampaignOrigin | None = None,
) -> tuple[str | None, str | None, ExperimentConfig | None]:
    """(config hash, None, validated experiment) for a valid configuration, else (None, error message, None)."""
    try:
        data = compose(list(config.overrides))
    except (ComposeError, HydraException, OmegaConfBaseException) as error:
        return None, f"{label}: cannot compose: {error}".strip(), None
    experiment = {k: v for k, v in data.items() if k not in NON_EXPERIMENT_KEYS}
    try:
        validated = validate_or_raise(ExperimentConfig, experiment, context=label)
    except ConfigError as error:
        return None, _in_file(error, config, label, campaign), None
    return config_hash(validated), None, validated


def _in_file(error: ConfigError, config: PlannedConfig, label: str, campaign: CampaignOrigin | None = None) -> str:
    """The error's message, naming the line and key of the experiment file or campaign file a value came from."""
    if (config.source is None and campaign is None) or not error.details:
        return str(error)
    problems = []
    for problem in error.details:
        where = config.source.locate(problem, config.overrides) if config.source is not None else None
        if where is None and campaign is not None:
            where = _in_campaign(problem, config, campaign)
        problems.append(f"{where}: {problem.message}" if where else str(problem))
    return invalid_message(label, problems)


def _in_campaign(problem: Problem, config: PlannedConfig, campaign: CampaignOrigin) -> str | None:
    """Where the campaign file holds the value at fault: the job's last override of the problem's key (or of
    a section holding it) must be one the campaign's value made."""
    setting = [o for o in config.overrides if _holds(override_key(o), problem.key)]
    if not setting or setting[-1] not in config.campaign_keys:
        return None
    rest = problem.key[len(override_key(setting[-1])):]
    return campaign.locate(config.campaign_keys[setting[-1]], rest, problem.key)


def _holds(override: str, key: str) -> bool:
    """Whether an override of key `override` sets `key` itself or a section holding it."""
    return bool(key) and (key == override or key.startswith((f"{override}.", f"{override}[")))


def _swept_keys(configs: list[PlannedConfig]) -> list[str]:
    order: dict[str, None] = {}
    for c in configs:
        order.update(dict.fromkeys(c.params))
    absent = "\0absent"
    return [k for k in order if len({c.params.get(k, absent) for c in configs}) > 1]


def make_plan(
    cli_axes: list[Axis],
    settings: CampaignSettings,
    compose: Callable[[list[str]], dict[str, Any]],
    *,
    default_backend: str,
    model_options: set[str],
    dataset_options: Iterable[str] = (),
    campaign_origin: CampaignOrigin | None = None,
) -> Plan:
    """Expand, compose and validate every configuration, drop duplicates, and order the jobs.

    `campaign_origin` is the campaign file the settings came from: a job a value of it makes invalid
    names the file's line of that value."""
    configs = expand(
        cli_axes, settings, default_backend=default_backend, model_options=model_options, dataset_options=dataset_options
    )
    valid: list[tuple[PlannedConfig, str]] = []
    invalid: list[tuple[PlannedConfig, str]] = []
    first_by_hash: dict[str, PlannedConfig] = {}
    equivalents = Equivalents(enabled=settings.dedup == "resolved")
    every_valid: list[dict[str, Any]] = []  # each distinct valid configuration, kept or equivalent
    resolved_configs: dict[str, dict[str, Any]] = {}
    experiments: dict[str, ExperimentConfig] = {}
    duplicates: list[Duplicate] = []
    for index, config in enumerate(configs, start=1):
        label = f"configuration {index}/{len(configs)} [{' '.join(config.overrides) or 'defaults'}]"
        digest, error, validated = _validate(config, compose, label, campaign_origin)
        if digest is None or validated is None:
            invalid.append((config, error or "invalid"))
            continue
        if digest in first_by_hash:
            duplicates.append(
                Duplicate(overrides=list(config.overrides), same_as=list(first_by_hash[digest].overrides), config_hash=digest)
            )
            continue
        data = validated.model_dump(mode="json")
        every_valid.append(data)
        same = equivalents.earlier(data, config)
        if same is not None:  # equal effective engine settings: the same work
            duplicates.append(Duplicate(overrides=list(config.overrides), same_as=list(same[0].overrides),
                                        config_hash=digest, kind="equivalent", differs_in=same[1]))
            continue
        first_by_hash[digest] = config
        valid.append((config, digest))
        resolved_configs[digest] = data
        experiments[digest] = validated

    valid = servers_adjacent(valid, experiments)
    execution = settings.execution
    seed = execution.shuffle_seed
    if execution.structure == "shuffled" and seed is None:
        seed = secrets.randbelow(2**31)
    order = run_order(len(valid), execution.cycles, execution.structure, seed)
    jobs = [
        PlannedJob(job_num=n, config=valid[i][0], cycle=cycle, config_hash=valid[i][1])
        for n, (i, cycle) in enumerate(order)
    ]
    jobs += [
        PlannedJob(job_num=len(jobs) + k, config=c, cycle=0, config_hash=None, status="invalid", error=e)
        for k, (c, e) in enumerate(invalid)
    ]
    swept = _swept_keys([c for c, _ in valid] + [c for c, _ in invalid])
    note = order_note(len(valid), execution.cycles, execution.structure)
    notes = ([note] if note else []) + dormant_notes(every_valid)
    for duplicate in duplicates:
        duplicate.same_as_jobs = [j.job_num for j in jobs if list(j.config.overrides) == duplicate.same_as]
    return Plan(
        jobs=jobs,
        settings=settings,
        shuffle_seed=seed,
        swept_keys=swept,
        duplicates=duplicates,
        planned_configs=len(configs),
        resolved=resolved_configs,
        experiments=experiments,
        notes=notes,
    )


def servers_adjacent(valid: list[tuple[PlannedConfig, str]], experiments: dict[str, ExperimentConfig]
                     ) -> list[tuple[PlannedConfig, str]]:
    """Serving configurations that share a server (equal backend load key: model and every engine argument) made
    adjacent, each group where its first member was, load points in the order given; offline configurations
    keep their places. A warm worker then starts each server once per cycle, not once per load point, as a grid
    like `load.rate=1,2,4 backend.max_num_seqs=4,8` would otherwise alternate the server settings."""
    from llem.backends.registry import server_key

    keys = [server_key(experiments[digest]) for _, digest in valid]
    if all(k is None for k in keys):
        return valid
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is not None:
            first.setdefault(key, i)
    rank = [i if key is None else first[key] for i, key in enumerate(keys)]
    return [valid[i] for i in sorted(range(len(valid)), key=lambda i: (rank[i], i))]


def build_manifest(plan: Plan, *, campaign_name: str, sweep_dir: Path, result_name: str = "result.json") -> CampaignManifest:
    """The manifest for a fresh plan: every job pending (or invalid/skipped), nothing run."""
    now = utc_now()
    jobs = [
        ManifestJob(
            job_num=j.job_num,
            overrides=list(j.config.overrides),
            backend=j.config.backend,
            cycle=j.cycle,
            config_hash=j.config_hash,
            params=dict(j.config.params),
            status=j.status,  # type: ignore[arg-type]
            error=j.error,
            result_path=str(Path(sweep_dir) / str(j.job_num) / result_name) if j.status == "pending" else None,
        )
        for j in plan.jobs
    ]
    return CampaignManifest(
        campaign_name=campaign_name,
        campaign_id=campaign_id(campaign_name),
        config_hash=plan.plan_hash(),
        created_at=now,
        updated_at=now,
        sweep_dir=str(sweep_dir),
        cycles=plan.settings.execution.cycles,
        structure=plan.settings.execution.structure,
        shuffle_seed=plan.shuffle_seed,
        swept_keys=plan.swept_keys,
        group_by=list(plan.settings.group_by),
        report=plan.settings.report.model_dump(),
        duplicates=plan.duplicates,
        jobs=jobs,
    )
