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


def params_overrides(params: Any) -> list[str]:
    """`hydra.sweeper.params` (`{key: "a,b"}`, from a config file or the command line) as overrides."""
    if params is None:
        return []
    if OmegaConf.is_config(params):
        params = OmegaConf.to_container(params, resolve=True)
    if not isinstance(params, dict):
        raise CampaignError(
            f"hydra.sweeper.params: expected a mapping of key to values, e.g. {{backend.batch_size: \"1,4\"}}, "
            f"got {params!r}"
        )
    out = []
    for key, value in params.items():
        if isinstance(value, (dict, list)) or value is None:
            raise CampaignError(
                f"hydra.sweeper.params.{key}: expected the values as one string, e.g. \"1,4\", got {value!r}"
            )
        out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def run_sweep(sweeper: Any, arguments: list[str]) -> list[Sequence[JobReturn]]:
    config: DictConfig = sweeper.config
    arguments = params_overrides(sweeper.params) + list(arguments)
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
        sys.exit(stop.exit_code)
    if not outcome.ok:
        raise CampaignError(outcome.failure_summary())
    return outcome.returns
