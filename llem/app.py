"""The `python -m llem` Hydra app: compose conf/, validate, measure one experiment."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig

from llem.config.yaml_source import syntax_error_parts

CONFIG_PATH = "pkg://llem.conf"
CONFIG_NAME = "config"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_entry(cfg: DictConfig) -> Any:
    from llem.task import run_task

    return run_task(cfg)


def config_file_syntax_error(error: BaseException) -> str | None:
    """A short message for a YAML syntax error in a config file (named by the parser's mark), else None."""
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, yaml.MarkedYAMLError):
        seen = seen.__cause__
    if seen is None:
        return None
    mark = seen.problem_mark or seen.context_mark
    name = getattr(mark, "name", None)
    if not name or name.startswith("<"):  # parsed from a string, not a file
        return None
    line, problem = syntax_error_parts(seen)
    where = f", line {line}" if line is not None else ""
    return f"llem: config file {name}{where}: not valid YAML: {problem}"


@contextmanager
def short_yaml_errors() -> Iterator[None]:
    """Report a config file that is not valid YAML in one line (exit status 1) instead of Hydra's
    traceback; every other error, and any error with HYDRA_FULL_ERROR=1, is Hydra's to report."""
    from hydra._internal import utils as hydra_utils

    original: Callable[[Any], Any] | None = getattr(hydra_utils, "run_and_report", None)
    if original is None:  # another Hydra layout: leave its reporting alone
        yield
        return

    def run_and_report(func: Any) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except Exception as error:
                message = config_file_syntax_error(error)
                if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                sys.stderr.write(message + "\n")
                sys.exit(1)

        return original(guarded)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def main() -> None:
    """Console entry point (`llem ...` is the same as `python -m llem ...`)."""
    with short_yaml_errors():
        _hydra_entry()


if __name__ == "__main__":
    main()
