"""The Sweeper class Hydra instantiates; the work (and heavy imports) live in `_core`."""


import sys
from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LlemSweeper(Sweeper):
    def __init__(
        self,
        max_batch_size: Optional[int] = None,
        params: Any = None,
        skip_invalid: bool = False,
        dry_run: bool = False,
        max_attempts: int = 2,
        resume_changed: bool = False,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.params = params  # checked when the sweep starts, where a mistake is reported without a traceback
        self.skip_invalid = skip_invalid
        self.dry_run = dry_run
        self.max_attempts = max(1, int(max_attempts))
        self.resume_changed = resume_changed
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> Any:
        from hydra_plugins.llem_sweeper._core import run_sweep
        from llem.campaign import CampaignError

        try:
            return run_sweep(self, arguments)
        except CampaignError as error:
            # A user mistake or failed jobs: the message says what and where. No traceback, and not Hydra's
            # HYDRA_FULL_ERROR hint (there is no stack worth reading); exit status 1.
            sys.stderr.write(f"{error}\n")
            raise SystemExit(1) from None
