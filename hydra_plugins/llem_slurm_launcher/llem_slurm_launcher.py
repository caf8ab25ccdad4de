"""`hydra/launcher=llem_slurm`: one SLURM job per group of jobs that share a backend and a model."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LlemSlurmLauncher(Launcher):
    """Hydra's launcher API and the campaign's (llem.launch.jobs.JobLauncher) over llem.launch.slurm.launcher.

    Each job's start and end is reported to the attached reporter as its SLURM group reports it."""

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

    def attach(self, reporter: Any) -> None:
        """The campaign's reporter: `started`, `finished` and `placed` record each job as its group reports it."""
        self.session = reporter

    def run_jobs(self, jobs: Sequence[Any]) -> Sequence[JobReturn]:
        """The campaign's planned jobs (llem.launch.jobs.Job), numbered consecutively."""
        from llem.launch.slurm.launcher import launch

        return launch(self, [list(job.overrides) for job in jobs], jobs[0].num if jobs else 0, jobs=jobs)

    def workers(self) -> None:
        """Nothing for the campaign's preflight to check here: the groups run on the cluster's nodes."""
        return None

    def live_job_dirs(self, sweep_dir: Path) -> set[Path]:
        """Job dirs that SLURM jobs of an earlier run may still be writing (their temp files are not stale)."""
        from llem.launch.slurm.launcher import live_job_dirs

        return live_job_dirs(sweep_dir)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from llem.launch.slurm.launcher import launch

        return launch(self, job_overrides, initial_job_idx)
