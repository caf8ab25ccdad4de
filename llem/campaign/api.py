"""Campaigns from Python: the same plan, state and launchers as `python -m llem -m ...`, no command line.

    from llem.campaign import run_campaign
    outcome = run_campaign(["backend.batch_size=1,4", "model=tiny"], sweep_dir="runs/batch")
    print(outcome.counts, outcome.manifest_path)

Overrides are Hydra's, exactly as on the command line (`hydra/launcher=llem_container`,
`campaign.execution.cycles=3`, `hydra.sweeper.max_attempts=1`, ...). Running the same call again
resumes the campaign in `sweep_dir`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llem.campaign.engine import Campaign, CampaignInterrupted, CampaignOptions, CampaignOutcome
from llem.campaign.planning import manifest_path, plan_campaign
from llem.campaign.state import recorded_shuffle_seed
from llem.launch.interrupts import sigterm_as_interrupt
from llem.measure.result import RESULT_FILENAME
from llem.plan.compose import FastComposer

DEFAULT_SUBDIR = "${hydra.job.num}"

log = logging.getLogger(__name__)


def options_from(config: DictConfig) -> CampaignOptions:
    """The engine options a composed config's `hydra.sweeper` section sets (llem sweeper keys)."""
    sweeper = OmegaConf.select(config, "hydra.sweeper") or {}
    known = set(CampaignOptions.__dataclass_fields__)
    values = {k: v for k, v in dict(sweeper).items() if k in known}
    values["max_attempts"] = max(1, int(values.get("max_attempts", 2)))
    return CampaignOptions(**values)


def workers_of(launcher: Any) -> Any:
    """Where a llem launcher runs jobs, for the preflight; None for other launchers, and for SLURM's."""
    from llem.launch.jobs import JobLauncher

    return launcher.workers() if isinstance(launcher, JobLauncher) else None


def job_result_paths(
    config: DictConfig, config_loader: Any, planned: FastComposer | None = None
) -> Callable[[int, Sequence[str]], str | None]:
    """Where a job writes its result.json under a custom `hydra.sweep.subdir`: its config assembled from the plan's
    composition (`planned`) and numbered as the llem launchers do, then the subdir resolved (it may use the job's
    number, id, overrides or values). None for a job whose subdir cannot be resolved before it runs; the launcher
    reports its dir then."""
    from llem.launch.job_config import JobComposer
    from llem.launch.jobs import Job

    composer = JobComposer(config_loader, config)

    def result_path(job_num: int, overrides: Sequence[str]) -> str | None:
        composition = None if planned is None else planned.composition(overrides)
        try:
            job = composer.for_job(Job(num=job_num, overrides=tuple(overrides), composition=composition))
            job_dir = Path(str(job.hydra.sweep.dir)).absolute() / str(job.hydra.sweep.subdir)
        except Exception as error:  # noqa: BLE001 - e.g. a subdir that reads the clock: known only when it runs
            log.debug("llem: the output dir of job %d is not known before it runs: %s", job_num, error)
            return None
        return str(job_dir / RESULT_FILENAME)

    return result_path


def campaign_for(
    config: DictConfig, config_loader: Any, launcher: Any, arguments: Sequence[str], options: CampaignOptions
) -> Campaign:
    """Plan the campaign a composed multirun config and its sweep arguments describe, on `launcher`."""
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    try:
        with sigterm_as_interrupt():
            planned = plan_campaign(
                config, config_loader, arguments,
                recorded_seed=lambda settings: recorded_shuffle_seed(manifest_path(sweep_dir, settings)),
            )  # fmt: skip
    except KeyboardInterrupt:
        # Nothing was recorded or launched yet: no campaign to resume, only a plan to redo.
        raise CampaignInterrupted("llem: interrupted while planning; nothing was recorded or launched") from None
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")  # type: ignore[union-attr]
    custom_subdir = str(subdir) != DEFAULT_SUBDIR
    return Campaign(
        planned,
        launcher=launcher,
        sweep_dir=sweep_dir,
        options=options,
        campaign_name=str(config.hydra.job.name),
        custom_subdir=custom_subdir,
        workers=workers_of(launcher),
        multirun_yaml=OmegaConf.to_yaml(config),
        job_result_path=job_result_paths(config, config_loader, planned.composer) if custom_subdir else None,
    )


def run_campaign(
    overrides: Sequence[str] = (),
    *,
    sweep_dir: str | Path,
    config_module: str = "llem.conf",
    config_name: str = "config",
    options: CampaignOptions | None = None,
) -> CampaignOutcome:
    """Plan and run (or resume) a campaign in `sweep_dir`; returns how it ended (see `CampaignOutcome.ok`).

    Raises `CampaignError` for a mistake in the campaign (nothing launched) and `CampaignInterrupted`
    on Ctrl-C. Failed jobs do not raise: they are in `outcome.failed`.

    It leaves the calling process as it found it: no signal handler is installed off the main thread (a
    service's worker thread may call it), nothing stays frozen for the garbage collector, and Hydra's global
    state (its config singleton) is as it was.
    """
    from hydra import initialize_config_module
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    from llem.task import run_task

    all_overrides = [*overrides, f"hydra.sweep.dir={Path(sweep_dir).absolute()}"]
    had_hydra = GlobalHydra.instance().is_initialized()
    if had_hydra:
        raise RuntimeError("run_campaign needs Hydra uninitialised (call it outside hydra.initialize/@hydra.main)")
    hydra_config = HydraConfig.instance()
    previous_config = hydra_config.cfg  # the singleton outlives the `with`: put back what the caller had
    try:
        with initialize_config_module(config_module=config_module, version_base="1.3", job_name="llem"):
            loader = GlobalHydra.instance().config_loader()
            config = loader.load_configuration(config_name=config_name, overrides=all_overrides,
                                               run_mode=RunMode.MULTIRUN)  # fmt: skip
            hydra_config.set_config(config)
            context = HydraContext(config_loader=loader, callbacks=Callbacks(config))
            launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=run_task,
                                                               config=config)  # fmt: skip
            arguments = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))  # type: ignore[arg-type]
            campaign = campaign_for(config, loader, launcher, arguments, options or options_from(config))
            return campaign.run()
    finally:
        hydra_config.cfg = previous_config
