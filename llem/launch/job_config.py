"""Each job's full Hydra config (hydra node included), as `load_sweep_config` would give it.

A job a campaign planned is assembled from the plan's composition of it (llem.plan.compose.Composition):
not composed, and its value overrides not applied, again. Any other job is composed here, fast:

Hydra's config loader builds the defaults tree again for every job (tens of milliseconds).
Jobs of a campaign share a handful of config-group selections, so the config of a selection
is composed once and each job gets a copy with its value overrides applied the way Hydra
applies them, plus the per-job `hydra.overrides` and `hydra.job.override_dirname`. Anything
unusual (a job override Hydra treats specially) takes Hydra's own path.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from llem.launch.jobs import Job
from llem.plan.compose import Composition, GroupLookup


class JobComposer:
    """`compose(overrides)` ≡ `config_loader.load_sweep_config(master, overrides)`, one Hydra composition
    per config-group selection."""

    def __init__(self, config_loader: Any, master_config: DictConfig) -> None:
        self._loader = config_loader
        self._master = master_config
        self._hydra_overrides = list(OmegaConf.to_container(master_config.hydra.overrides.hydra))  # type: ignore[arg-type]
        self._parser = OverridesParser.create()
        self._group = GroupLookup(config_loader)
        self._bases: dict[tuple[str, ...], DictConfig] = {}
        self.compositions = 0

    def _slow(self, overrides: Sequence[str]) -> DictConfig:
        self.compositions += 1
        return self._loader.load_sweep_config(self._master, list(overrides))

    def for_job(self, job: Job) -> DictConfig:
        """The job's config, numbered: assembled from the plan's composition when it has one, else composed."""
        if job.composition is not None:
            return numbered(self.assemble(job.composition, job.overrides), job.num)
        return numbered(self.compose(job.overrides), job.num)

    def assemble(self, composition: Composition, overrides: Sequence[str]) -> DictConfig:
        """The config `compose(overrides)` gives, built from the plan's composition of those overrides."""
        parsed = self._parser.parse_overrides(list(overrides))
        cfg = OmegaConf.create({})
        # one copy of each node: the `hydra` node keeps its structured type; the job's keys come in as they were planned
        cfg.hydra = composition.base._get_node("hydra")
        for key, value in composition.items():
            cfg[key] = value
        OmegaConf.set_struct(cfg, True)
        return self._per_job(cfg, parsed)

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        parsed = self._parser.parse_overrides(list(overrides))
        if any(o.is_hydra_override() or o.is_sweep_override() or o.package is not None for o in parsed):
            return self._slow(overrides)
        groups = tuple(o.input_line for o in parsed if self._group(o))
        values = [o for o in parsed if not self._group(o)]
        base = self._bases.get(groups)
        if base is None:
            base = self._loader.load_configuration(
                config_name=self._master.hydra.job.config_name,
                overrides=self._hydra_overrides + list(groups),
                run_mode=RunMode.RUN,
            )
            self.compositions += 1
            self._bases[groups] = base
        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return self._per_job(cfg, parsed)

    def _per_job(self, cfg: DictConfig, parsed: list[Override]) -> DictConfig:
        """What `load_sweep_config` sets per job: its overrides, the working dir, the override dirname."""
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in parsed]
            cfg.hydra.runtime.cwd = os.getcwd()
            naming = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=parsed, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys
            )
        OmegaConf.copy_cache(from_config=self._master, to_config=cfg)
        return cfg


def numbered(config: DictConfig, job_num: int) -> DictConfig:
    """Give a composed job its number and id, as Hydra's own launchers do."""
    with open_dict(config):
        config.hydra.job.id = f"{config.hydra.job.name}_{job_num}"
        config.hydra.job.num = job_num
    return config
