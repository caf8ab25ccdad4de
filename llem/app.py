"""The `python -m llem` Hydra app: compose conf/, validate, measure one experiment."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

CONFIG_PATH = "pkg://llem.conf"
CONFIG_NAME = "config"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_entry(cfg: DictConfig) -> Any:
    from llem.task import run_task

    return run_task(cfg)


def main() -> None:
    """Console entry point (`llem ...` is the same as `python -m llem ...`)."""
    _hydra_entry()


if __name__ == "__main__":
    main()
