"""`hydra/launcher=llem_local`: one warm local worker process per routing key."""

from typing import Any, Dict, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LlemLocalLauncher(Launcher):
    kind = "local"

    def __init__(self, **options: Any) -> None:
        self.options: Dict[str, Any] = dict(options)
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        self.runner: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.llem_launcher._core import launch

        return launch(self, job_overrides, initial_job_idx)

    def attach_campaign(self, **context: Any) -> None:
        """Called by the llem sweeper: manifest path and campaign settings."""
        from hydra_plugins.llem_launcher._core import attach

        attach(self, **context)

    def finish(self) -> None:
        """Stop every worker (called at the end of a campaign, and at exit)."""
        if self.runner is not None:
            self.runner.close()
