"""The llem sweep as a thin adapter: Hydra's sweeper call → llem.campaign (plan, run, report)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf

from llem.campaign import (
    CampaignError,
    CampaignInterrupted,
    CampaignOptions,
    is_llem_app,
    launch_plain,
    parse_axes,
)
from llem.campaign.api import campaign_for


def run_sweep(sweeper: Any, arguments: list[str]) -> list[Sequence[JobReturn]]:
    config: DictConfig = sweeper.config
    arguments = [f"{k}={v}" for k, v in sweeper.params.items()] + list(arguments)
    loader = sweeper.hydra_context.config_loader
    if not is_llem_app(config):
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        jobs = list(itertools.product(*(a.choices for a in parse_axes(arguments, loader))))
        return launch_plain(sweeper.launcher, jobs, sweeper.max_batch_size)
    options = CampaignOptions(
        max_batch_size=sweeper.max_batch_size, skip_invalid=sweeper.skip_invalid, dry_run=sweeper.dry_run,
        max_attempts=sweeper.max_attempts, resume_changed=sweeper.resume_changed,
    )  # fmt: skip
    try:
        outcome = campaign_for(config, loader, sweeper.launcher, arguments, options).run()
    except CampaignInterrupted as stop:
        print(stop, file=sys.stderr)
        sys.exit(130)
    if not outcome.ok:
        raise CampaignError(outcome.failure_summary())
    return outcome.returns
