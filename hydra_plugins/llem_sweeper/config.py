"""Config of the llem sweeper (`hydra/sweeper=llem`), registered in Hydra's ConfigStore."""

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class LlemSweeperConf:
    _target_: str = "hydra_plugins.llem_sweeper.llem_sweeper.LlemSweeper"
    # Jobs handed to the launcher at once (null: all).
    max_batch_size: Optional[int] = None
    # Extra sweep axes, like the basic sweeper's `params` (key -> "a,b,c"). Typed Any, not Dict[str, str]: OmegaConf
    # cannot merge a command-line `hydra.sweeper.params={key: "a,b"}` into a typed null; the sweeper checks the shape.
    params: Any = None
    # Run the valid jobs and record the invalid ones as skipped, instead of refusing to start.
    skip_invalid: bool = False
    # Print and record the plan, launch nothing.
    dry_run: bool = False
    # Runs per job before a failure is final (failed jobs are retried, also when a campaign resumes).
    max_attempts: int = 2
    # Resume even if the campaign definition changed: keep existing results, add the new jobs.
    resume_changed: bool = False


ConfigStore.instance().store(group="hydra/sweeper", name="llem", node=LlemSweeperConf, provider="llem")
