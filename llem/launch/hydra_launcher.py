"""The llem launchers as Hydra `Launcher`s: the one module where Hydra's launcher API meets llem's.

Hydra calls `launch(job_overrides, initial_job_idx)`; the campaign engine hands over planned jobs
(`run_jobs`, llem.launch.jobs.JobLauncher). Both end in the same `WarmLauncher`
(llem.launch.warm), so a campaign driven from Python (`llem.campaign.run_campaign`) runs exactly as
one from the command line. The plugin classes in hydra_plugins/ only name a conf and a kind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from llem.launch.job_config import JobComposer
from llem.launch.jobs import Job, numbered_jobs
from llem.launch.options import ContainerOptions, LocalOptions
from llem.launch.reporting import JobReporter
from llem.launch.warm import WarmLauncher
from llem.launch.workers import Workers

log = logging.getLogger(__name__)


class LlemLauncher(Launcher):
    """Runs each job on the warm worker of its routing key; reports every job to the attached reporter."""

    kind: ClassVar[str] = "local"
    options_type: ClassVar[type[LocalOptions]] = LocalOptions

    def __init__(self, **options: Any) -> None:
        self.options = self.options_type.from_config(options)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.reporter: JobReporter | None = None
        self._warm: WarmLauncher | None = None

    @staticmethod
    def nvml() -> Any:
        """The NVML module to list the node's GPUs with (a scripted one under LLEM_NVML_FACTORY)."""
        from llem.launch.protocol import nvml_from_env

        return nvml_from_env()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    @property
    def warm(self) -> WarmLauncher:
        """The launcher's workers and jobs, made at the first launch (Hydra's setup comes first)."""
        if self._warm is None:
            config, context = self.config, self.hydra_context
            assert config is not None and context is not None, "setup() comes first"
            composer = JobComposer(context.config_loader, config)
            self._warm = WarmLauncher(
                self.kind, self.options, Path(str(config.hydra.sweep.dir)),
                compose=composer.for_job,
                task_function=self.task_function, hydra_context=context, nvml=self.nvml(),
            )  # fmt: skip
            if self.reporter is not None:
                self._warm.attach(self.reporter)
        return self._warm

    # ------------------------------------------------------------------ llem.launch.jobs.JobLauncher
    def attach(self, reporter: JobReporter) -> None:
        """Called by the campaign engine: where every job is reported."""
        self.reporter = reporter
        if self._warm is not None:
            self._warm.attach(reporter)

    def run_jobs(self, jobs: Sequence[Job]) -> Sequence[JobReturn]:
        self._logging()
        return self.warm.run(jobs)

    def workers(self) -> Workers:
        return self.warm.workers()

    def finish(self) -> None:
        """Stop every worker (at the end of a campaign, and at exit), then free the GPUs it held."""
        if self._warm is not None:
            self._warm.finish()

    # ------------------------------------------------------------------ hydra.plugins.launcher.Launcher
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Jobs no campaign planned (another sweeper): each is composed here and validated when it runs."""
        self._logging()
        return self.warm.run(numbered_jobs(job_overrides, initial_job_idx))

    def _logging(self) -> None:
        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)


class LlemContainerLauncherBase(LlemLauncher):
    kind: ClassVar[str] = "container"
    options_type: ClassVar[type[LocalOptions]] = ContainerOptions
