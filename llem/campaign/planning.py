"""From a composed Hydra config and command-line arguments to a validated plan (no state, no output)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from llem.config import CampaignSettings, ConfigError
from llem.launch.jobs import Job
from llem.plan.campaign_file import CampaignFileError, campaign_group_file, load_campaign
from llem.plan.compose import FastComposer
from llem.plan.expand import Axis, PlanError
from llem.plan.manifest import ManifestJob
from llem.plan.planner import Plan, make_plan


class CampaignError(Exception):
    """A user mistake in the campaign or the command line, or failed jobs: the message says what and where."""


def parse_axes(arguments: Sequence[str], config_loader: Any) -> list[Axis]:
    """Command-line overrides as axes (Hydra's grammar: a,b / choice() / range() / glob())."""
    parser = OverridesParser.create(config_loader=config_loader)
    axes: list[Axis] = []
    for override in parser.parse_overrides(list(arguments)):
        key_element = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise CampaignError(f"{override.input_line}: interval sweeps are not supported; list the values")
            choices = [f"{key_element}={v}" for v in override.sweep_string_iterator()]
        else:
            choices = [override.input_line]
        key = override.key_or_group
        axes = [a for a in axes if a.key != key] + [Axis(key=key, choices=choices)]
    return axes


def is_llem_app(config: DictConfig) -> bool:
    """Whether the Hydra app is llem's (else a sweeper falls back to a plain cartesian product)."""
    return OmegaConf.select(config, "backend.name") is not None and "model" in config


def split_campaign_axes(axes: list[Axis]) -> tuple[list[Axis], list[Axis]]:
    """`campaign.*` overrides (one value each) apart from the experiment axes."""
    campaign = [a for a in axes if a.key == "campaign" or a.key.startswith("campaign.")]
    rest = [a for a in axes if a not in campaign]
    swept = [a.key for a in campaign if len(a.choices) > 1]
    if swept:
        raise CampaignError(f"campaign settings cannot be swept ({', '.join(swept)}): give one value")
    return campaign, rest


def manifest_path(sweep_dir: Path, settings: CampaignSettings) -> Path:
    state = Path(settings.io.state_dir)
    return (state if state.is_absolute() else sweep_dir / state) / settings.io.manifest_filename


def invalid_report(plan: Plan, *, launched: bool) -> str:
    what = "they are skipped" if launched else "nothing was launched"
    lines = [f"llem: {len(plan.invalid)} of {plan.planned_configs} planned configuration(s) are invalid; {what}."]
    lines += [f"- {job.error}" for job in plan.invalid]
    if not launched:
        lines.append("Fix them, or run the valid ones with hydra.sweeper.skip_invalid=true.")
    return "\n".join(lines)


def _group_options(loader: Any, group: str) -> set[str]:
    try:
        return set(loader.get_group_options(group))
    except Exception:  # noqa: BLE001 - an app without that config group
        return set()


@dataclass
class PlannedCampaign:
    plan: Plan
    settings: CampaignSettings
    composer: FastComposer


def job_value(job: ManifestJob, plan: Plan, gpu_needs: dict[str, int] | None = None,
              composer: FastComposer | None = None) -> Job:
    """What a launcher gets for one job of the state: its plan, composed and validated once (`gpu_needs` caches
    the GPU need per configuration; `composer` holds the compositions the launcher assembles jobs from). A job
    whose configuration the plan no longer holds is composed by the launcher and validates itself when it runs."""
    from llem.measure.job_devices import gpu_need

    experiment = None if job.config_hash is None else plan.experiments.get(job.config_hash)
    gpus = 0
    if experiment is not None:
        cache = {} if gpu_needs is None else gpu_needs
        if job.config_hash not in cache:
            cache[job.config_hash] = gpu_need(experiment)  # type: ignore[index]
        gpus = cache[job.config_hash]  # type: ignore[index]
    composition = None if experiment is None or composer is None else composer.composition(job.overrides)
    return Job(num=job.job_num, overrides=tuple(job.overrides), cycle=job.cycle, repetition=job.repetition,
               experiment=experiment, gpus=gpus, result_path=job.result_path, config_hash=job.config_hash,
               composition=composition)


def plan_campaign(
    config: DictConfig, config_loader: Any, arguments: Sequence[str], *, recorded_seed: Any = None
) -> PlannedCampaign:
    """Expand, compose and validate every job of the campaign the config and arguments describe.

    `recorded_seed(settings) -> int | None` gives the shuffle seed an existing campaign recorded,
    so a resumed shuffled campaign plans the same order.
    """
    axes = parse_axes(arguments, config_loader)
    campaign_axes, experiment_axes = split_campaign_axes(axes)
    section = OmegaConf.to_container(config.campaign, resolve=True) if "campaign" in config else None
    cwd = Path(str(OmegaConf.select(config, "hydra.runtime.cwd", default=None) or os.getcwd()))
    try:
        # a campaign file sits beneath the command line: its campaign.* overrides are applied again on top
        settings, origin = load_campaign(section, [a.choices[0] for a in campaign_axes], cwd=cwd,  # type: ignore[arg-type]
                                         group_file=campaign_group_file(config))
    except (ConfigError, CampaignFileError) as error:
        raise CampaignError(str(error)) from None
    execution = settings.execution
    if recorded_seed is not None and execution.structure == "shuffled" and execution.shuffle_seed is None:
        seed = recorded_seed(settings)
        if seed is not None:
            settings = settings.model_copy(update={"execution": execution.model_copy(update={"shuffle_seed": seed})})
    # jobs never carry campaign overrides, so the campaign section is not part of what is validated
    # the overrides as typed: one such as hydra.sweep.subdir=job_${hydra.job.num} resolves only within a job
    hydra_overrides = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)
    composer = FastComposer(
        config_loader, config.hydra.job.config_name, list(hydra_overrides), drop_keys=("campaign",)  # type: ignore[arg-type]
    )
    try:
        plan = make_plan(
            experiment_axes,
            settings,
            composer.compose,
            default_backend=str(OmegaConf.select(config, "backend.name")),
            model_options=_group_options(config_loader, "model"),
            dataset_options=_group_options(config_loader, "dataset"),
            campaign_origin=origin,
        )
    except PlanError as error:
        raise CampaignError(f"llem: {error}") from None
    if settings.group_by:
        from llem.report.stats import UnknownColumn, check_group_by

        try:
            check_group_by(settings.group_by, {k for job in plan.jobs for k in job.config.params})
        except UnknownColumn as error:
            raise CampaignError(f"llem: campaign.{error}") from None
    return PlannedCampaign(plan, settings, composer)
