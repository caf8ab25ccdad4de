"""The task function every llem job runs: validate, then measure."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from llem.composed import validate_composed
from llem.config import ConfigError


def _is_single_run() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.RUN
    except ValueError:  # called outside Hydra (tests, workers)
        return False


def run_task(cfg: DictConfig) -> Any:
    """Validate the composed config and measure it.

    A configuration mistake in a single run ends the process with exit code 2 and a
    message naming the field, never a traceback; in a multirun it fails that job only.
    """
    try:
        composed = validate_composed(cfg)
    except ConfigError as error:
        if _is_single_run():
            print(f"llem: {error}", file=sys.stderr)
            sys.exit(2)
        raise
    print(
        f"llem: configuration valid ({composed.experiment.backend.name}, {composed.experiment.model.name}, "
        f"{composed.experiment.fp_precision}); measurement is not available in this build, nothing was measured.",
        file=sys.stderr,
    )
    return None
