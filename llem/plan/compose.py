"""Compose job configs fast: one Hydra composition per config-group selection, values applied after.

Hydra's config loader costs tens of milliseconds per job; a campaign has thousands of
jobs but only a handful of distinct group selections (backend, model, dataset). The
config for a selection is composed once by Hydra, then each job's value overrides are
applied to a plain copy with Hydra's override semantics (change needs an existing key,
`+` adds, `++` adds or changes, `~` deletes). Configs that use interpolations take the
exact OmegaConf path instead, so resolution matches Hydra's.

Each configuration's composition is kept (`Composition`: its selection's whole config, `hydra`
included, and its own keys), so the launcher assembles the job from it instead of composing it again.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

DROPPED_KEYS = ("hydra",)


class ComposeError(Exception):
    """A job's overrides cannot be applied (e.g. changing a key that does not exist)."""


def _has_interpolation(node: Any) -> bool:
    if isinstance(node, str):
        return "${" in node
    if isinstance(node, dict):
        return any(_has_interpolation(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_interpolation(v) for v in node)
    return False


def _copy(node: Any) -> Any:
    """Copy plain config data (dicts, lists, scalars); several times faster than copy.deepcopy."""
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _structured(node: Any) -> bool:
    """Whether a composed node (or one below it) is typed by a structured config, which plain data would lose."""
    if isinstance(node, DictConfig):
        return OmegaConf.get_type(node) not in (dict, None) or any(
            _structured(node._get_node(k)) for k in node.keys())  # fmt: skip
    if isinstance(node, ListConfig):
        return any(_structured(node._get_node(i)) for i in range(len(node)))
    return False


def _share(cfg: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with each top-level value that equals the base's replaced by the base's own: a campaign keeps one
    composition per configuration, and most of each is its group selection's base."""
    for key, value in cfg.items():
        if key in base and value is not base[key] and value == base[key]:
            cfg[key] = base[key]
    return cfg


@dataclass(frozen=True, eq=False)
class Composition:
    """One configuration as the plan composed it, for its jobs to be assembled from without composing again.

    `base` is the whole config of its config-group selection (the `hydra` node included), composed by Hydra
    once and shared by that selection's jobs; `task` is the configuration's own keys after its value
    overrides (interpolations kept), shared by its cycles and repetitions. Neither is ever changed.
    """

    base: DictConfig
    task: dict[str, Any]
    dropped: frozenset[str]  # the base's keys the plan left out (`hydra`, `campaign`): the job takes them as they are
    interpolated: bool  # `task` holds interpolations: they resolve in the job, which then validates itself

    def items(self) -> list[tuple[str, Any]]:
        """The job's keys other than `hydra`, in Hydra's order: the base's, then those its overrides added."""
        out = [(k, self.base._get_node(k) if k in self.dropped else self.task[k])
               for k in self.base.keys() if k != "hydra" and (k in self.dropped or k in self.task)]
        return out + [(k, v) for k, v in self.task.items() if k not in self.base]


def _missing(parent: Any, part: str) -> bool:
    return not isinstance(parent, dict) or part not in parent


def _merge(target: dict[str, Any], key: str, value: Any) -> None:
    """OmegaConf.update(merge=True) on plain data: dicts merge into dicts, anything else replaces."""
    current = target.get(key)
    if isinstance(current, dict) and isinstance(value, dict):
        for k, v in value.items():
            _merge(current, k, v)
    else:
        target[key] = _copy(value)


def _parent(cfg: dict[str, Any], key: str, create: bool) -> tuple[dict[str, Any] | None, str]:
    parts = key.split(".")
    node: Any = cfg
    for part in parts[:-1]:
        if _missing(node, part) or node[part] is None:
            if not create:
                return None, parts[-1]
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            return None, parts[-1]
    return node, parts[-1]


def apply_value_override(cfg: dict[str, Any], override: Override) -> None:
    """Apply one non-group override to plain data exactly as Hydra would to a struct config."""
    key = override.key_or_group
    value = override.value()
    line = override.input_line
    if override.is_delete():
        parent, leaf = _parent(cfg, key, create=False)
        if parent is None or leaf not in parent or parent[leaf] is None:
            raise ComposeError(f"Could not delete from config. '{key}' does not exist.")
        if value is not None and value != parent[leaf]:
            raise ComposeError(f"Could not delete from config. The value of '{key}' is {parent[leaf]} and not {value}.")
        del parent[leaf]
        return
    if override.is_add():
        parent, leaf = _parent(cfg, key, create=True)
        assert parent is not None
        if parent.get(leaf) is not None and not isinstance(value, (dict, list)):
            raise ComposeError(f"Could not append to config. An item is already at '{key}'. Remove the + from '{line}'.")
        _merge(parent, leaf, value)
        return
    if override.is_force_add():
        parent, leaf = _parent(cfg, key, create=True)
        assert parent is not None
        _merge(parent, leaf, value)
        return
    parent, leaf = _parent(cfg, key, create=False)
    if parent is None or leaf not in parent:
        raise ComposeError(f"Could not override '{key}': the key is not in the config. To add it use +{line}")
    _merge(parent, leaf, value)


class GroupLookup:
    """Whether an override selects a config group (`backend=vllm`) or sets a value; cached per key."""

    def __init__(self, config_loader: Any) -> None:
        self._loader = config_loader
        self._known: dict[str, bool] = {}

    def __call__(self, override: Override) -> bool:
        key = override.key_or_group
        known = self._known.get(key)
        if known is None:
            known = bool(self._loader.repository.group_exists(key))
            self._known[key] = known
        return known


class FastComposer:
    """Experiment configs (as plain dicts) for many override lists, composing each group selection once."""

    def __init__(
        self,
        config_loader: Any,
        config_name: str | None,
        hydra_overrides: Sequence[str] = (),
        drop_keys: Sequence[str] = DROPPED_KEYS,
    ) -> None:
        self._loader = config_loader
        self._config_name = config_name
        self._hydra_overrides = list(hydra_overrides)
        self._drop = set(drop_keys) | set(DROPPED_KEYS)
        self._parser = OverridesParser.create()
        self._parsed: dict[str, Override] = {}
        self.is_group = GroupLookup(config_loader)
        self._bases: dict[tuple[str, ...], tuple[dict[str, Any] | None, DictConfig | None]] = {}
        # per group selection: the whole composed config (`hydra` included), or None where plain data would lose
        # a structured config's types (its jobs are then composed by the launcher)
        self._whole: dict[tuple[str, ...], DictConfig | None] = {}
        self._compositions: dict[tuple[str, ...], Composition] = {}
        self.compositions = 0

    def _parse(self, line: str) -> Override:
        parsed = self._parsed.get(line)
        if parsed is None:
            parsed = self._parser.parse_override(line)
            self._parsed[line] = parsed
        return parsed

    def _base(self, groups: tuple[str, ...]) -> tuple[dict[str, Any] | None, DictConfig | None]:
        base = self._bases.get(groups)
        if base is None:
            whole = self._loader.load_configuration(
                config_name=self._config_name,
                overrides=self._hydra_overrides + list(groups),
                run_mode=RunMode.RUN,
            )
            self.compositions += 1
            cfg = OmegaConf.masked_copy(whole, [k for k in whole.keys() if k not in self._drop])
            plain = OmegaConf.to_container(cfg, resolve=False)
            assert isinstance(plain, dict)
            base = (None, cfg) if _has_interpolation(plain) else (plain, None)
            self._bases[groups] = base
            self._whole[groups] = None if _structured(cfg) else whole
        return base

    def composition(self, overrides: Sequence[str]) -> Composition | None:
        """How the plan composed the configuration of these overrides (None: not composed here, or not
        assemblable from plain data; the launcher composes that job itself)."""
        return self._compositions.get(tuple(overrides))

    def _keep(self, overrides: Sequence[str], parsed: list[Override], groups: tuple[str, ...],
              task: dict[str, Any]) -> None:
        whole = self._whole.get(groups)
        if whole is None or any(o.is_hydra_override() or o.is_sweep_override() or o.package is not None
                                for o in parsed):
            return
        dropped = frozenset(k for k in whole.keys() if k in self._drop)
        self._compositions[tuple(overrides)] = Composition(whole, task, dropped, _has_interpolation(task))

    def compose(self, overrides: Sequence[str]) -> dict[str, Any]:
        """The composed config (without `hydra`) for one job; raises ComposeError or Hydra's errors.

        The composition is kept (`composition`) for the launcher to assemble the job from."""
        parsed = [self._parse(line) for line in overrides]
        groups = tuple(o.input_line for o in parsed if self.is_group(o))
        values = [o for o in parsed if not self.is_group(o)]
        plain, omega = self._base(groups)
        if plain is not None:
            cfg = _copy(plain)
            interpolated = False
            for override in values:
                apply_value_override(cfg, override)
                interpolated = interpolated or _has_interpolation(override.value())
            self._keep(overrides, parsed, groups, _share(cfg, plain))
            if interpolated:  # e.g. experiment_name=${backend.name}-run: plan what the job will run
                resolved = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)
                assert isinstance(resolved, dict)
                return resolved
            return cfg
        assert omega is not None
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        job = copy.deepcopy(omega)
        OmegaConf.set_struct(job, True)
        ConfigLoaderImpl._apply_overrides_to_config(values, job)
        unresolved = OmegaConf.to_container(job, resolve=False)
        assert isinstance(unresolved, dict)
        self._keep(overrides, parsed, groups, unresolved)
        resolved = OmegaConf.to_container(job, resolve=True)
        assert isinstance(resolved, dict)
        return resolved
