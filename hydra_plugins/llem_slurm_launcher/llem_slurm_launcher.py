"""`hydra/launcher=llem_slurm`: one SLURM job per group of jobs that share a backend and a model."""

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LlemSlurmLauncher(Launcher):
    # The campaign counts attempts and records each job's status from the returned JobReturns.
    reports_jobs = False

    def __init__(self, **options: Any) -> None:
        from llem.launch.slurm.options import options_from

        self.options = options_from(options)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.session: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def attach_campaign(self, session: Any) -> None:
        """The campaign's session: `session.placed(job_num, slurm_job_id=..., node=...)` records where jobs ran."""
        self.session = session

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from llem.launch.slurm.launcher import launch

        return launch(self, job_overrides, initial_job_idx)
