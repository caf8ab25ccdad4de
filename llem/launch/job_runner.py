"""Hydra's `run_job` for a warm worker, without its per-job copies of the whole config.

Hydra's `run_job` deep-copies the config and its large `hydra` node about a dozen times per job
(about two thirds of its cost, tens of milliseconds), which a worker running thousands of short
jobs pays on every one. This does the same steps in the same order (Hydra config, output dir,
`hydra.runtime.output_dir`, working dir, logging, `.hydra/` files, `env_set`, callbacks, the task,
the `JobReturn`), copies only the task part of the config, and writes the `.hydra/` files with
libyaml. The launcher conformance suites run against it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    _save_config,
    configure_log,
    env_override,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def run_job(
    task_function: TaskFunction,
    config: DictConfig,
    hydra_context: HydraContext,
    job_dir_key: str = "hydra.sweep.dir",
    job_subdir_key: str | None = "hydra.sweep.subdir",
) -> JobReturn:
    """Run one composed job in this process, as `hydra.core.utils.run_job` does."""
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    orig_hydra_cfg = HydraConfig.instance().cfg
    hydra_config = HydraConfig.instance()
    hydra_config.set_config(config)  # the `${hydra:...}` resolver, for the output dir and the task
    output_dir = str(OmegaConf.select(config, job_dir_key))
    if job_subdir_key is not None:
        output_dir = os.path.join(output_dir, str(OmegaConf.select(config, job_subdir_key)))
    output_dir = os.path.abspath(output_dir)
    for node in (config.hydra, hydra_config.cfg.hydra):  # type: ignore[union-attr]
        with read_write(node.runtime), open_dict(node.runtime):
            node.runtime.output_dir = output_dir
    chdir = False
    try:
        ret = JobReturn()
        task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        OmegaConf.set_struct(task_cfg, OmegaConf.is_struct(config))
        OmegaConf.set_readonly(task_cfg, OmegaConf.is_readonly(config))
        ret.cfg = task_cfg
        hydra_cfg = hydra_config.cfg  # a private copy made by set_config, not changed after this point
        ret.hydra_cfg = hydra_cfg
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        ret.overrides = overrides
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        chdir = bool(config.hydra.job.chdir)  # None means False from version_base 1.2 (see `supports`)
        if chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(output_dir) / str(config.hydra.output_subdir)
            _save_yaml(task_cfg, hydra_output / "config.yaml")
            _save_yaml(hydra_cfg, hydra_output / "hydra.yaml")
            _save_yaml(config.hydra.overrides.task, hydra_output / "overrides.yaml")
        with env_override(config.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as error:  # noqa: BLE001 - a failed task is a FAILED JobReturn, as in Hydra
                ret.return_value = error
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if chdir:
            os.chdir(old_cwd)


_DUMPER = getattr(yaml, "CSafeDumper", None)


def _save_yaml(node: Any, path: Path) -> None:
    """What Hydra's `_save_config` writes (interpolations kept), through libyaml when it is there: Hydra's
    pure-Python YAML is the other large part of its per-job cost."""
    if _DUMPER is None:
        _save_config(node, path.name, path.parent)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
    path.write_text(yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=False, allow_unicode=True),
                    encoding="utf-8")


def supports(config: Any) -> bool:
    """Whether this runner stands in for Hydra's: it does not repeat Hydra's pre-1.2 `chdir` default and warning."""
    from hydra import version

    chdir = OmegaConf.select(config, "hydra.job.chdir", default=None)
    return chdir is not None or bool(version.base_at_least("1.2"))
