"""Expand a campaign grid, explicit experiments and CLI sweeps into distinct job configurations.

Each configuration is a list of ordinary Hydra overrides. Keys under `backend.` are
backend-scoped: they are applied only to backends whose schema has the field, which
is what lets one multirun sweep `batch_size` for PyTorch and `max_num_seqs` for vLLM.

Precedence, lowest first: the campaign-wide `model` (only for jobs that choose no model),
experiment files, the campaign-wide `dataset` and `num_samples`, inline experiment
overrides and grid axes, the command line.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llem.config.backends import BACKEND_CLASSES, BACKEND_NAMES, backends_with_field
from llem.config.campaign import CampaignSettings
from llem.config.errors import Problem, shape_name
from llem.config.yaml_source import KeyPath, YamlSource, YamlSyntaxError, dotted, load_yaml
from llem.plan.campaign_defaults import DefaultsError, model_overrides, prompt_overrides
from llem.plan.experiment_file import experiment_file_overrides, shape_problems
from llem.plan.values import render_override

BACKEND_PREFIX = "backend."
# Config groups of llem's conf: selecting one replaces every key set inside it.
CONFIG_GROUPS = ("backend", "model", "dataset")


class PlanError(Exception):
    """The campaign or command line cannot be expanded into jobs; the message says why."""


@dataclass(frozen=True)
class CampaignKey:
    """Where in the campaign's settings a choice's value was written (`grid.shared.fp_precision[1]`), and
    that value: a job the value makes invalid can then name the campaign file's line of it."""

    path: KeyPath
    value: Any


@dataclass
class Axis:
    """One swept (or fixed) key: every choice is a complete override string. `origins[i]` says where
    the campaign holds choice i's value (None, or absent, for the command line and experiment files)."""

    key: str
    choices: list[str]
    origins: list[CampaignKey | None] = field(default_factory=list)

    def origin(self, index: int) -> CampaignKey | None:
        return self.origins[index] if index < len(self.origins) else None

    @property
    def is_backend_scoped(self) -> bool:
        return self.key.startswith(BACKEND_PREFIX) and self.key != "backend.name"

    @property
    def field(self) -> str:
        return self.key[len(BACKEND_PREFIX) :].split(".", 1)[0]


@dataclass(frozen=True)
class ExperimentSource:
    """The experiment file a configuration was read from, and the overrides that file produced."""

    source: YamlSource
    overrides: frozenset[str]

    def locate(self, problem: Problem, overrides: Iterable[str]) -> str | None:
        """`experiment file <path>, line N, key 'k'` for a problem whose value comes from this file
        (not from an inline override, the campaign or the command line), else None."""
        found = self.source.find(problem.loc, problem.key)
        if found is None:
            return None
        key = found[1]
        setting = [o for o in overrides if _touches(override_key(o), key)]
        if not setting or any(o not in self.overrides for o in setting):
            return None
        return f"experiment file {self.source.path}, line {self.source.line_of(found[0])}, key '{key}'"


def _touches(override: str, key: str) -> bool:
    """Whether an override of key `override` sets `key`, a key inside it or the section holding it."""
    return override == key or override.startswith(f"{key}.") or key.startswith((f"{override}.", f"{override}["))


@dataclass(frozen=True)
class PlannedConfig:
    """A distinct experiment, before cycles: its overrides, backend and where it came from."""

    overrides: tuple[str, ...]
    backend: str
    origin: str
    params: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    source: ExperimentSource | None = field(default=None, compare=False, hash=False)
    campaign_keys: dict[str, CampaignKey] = field(default_factory=dict, compare=False, hash=False)


def strip_prefix(key: str) -> str:
    return key.lstrip("+~").split("@", 1)[0]


def override_key(override: str) -> str:
    """The config key an override string sets (prefixes and package stripped)."""
    return strip_prefix(override.split("=", 1)[0])


def override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def _backend_has(backend: str, key: str) -> bool:
    return key.split(".", 1)[0] in BACKEND_CLASSES[backend].model_fields


def _product(
    base: list[str], axes: Sequence[Axis], backend: str, origin: str, source: ExperimentSource | None = None
) -> Iterable[PlannedConfig]:
    for picks in itertools.product(*(range(len(a.choices)) for a in axes)):
        combo = [a.choices[i] for a, i in zip(axes, picks)]
        overrides = tuple(base) + tuple(combo)
        params = {override_key(o): override_value(o) for o in overrides if "=" in o}
        keys = {c: k for c, k in ((c, a.origin(i)) for c, a, i in zip(combo, axes, picks)) if k is not None}
        yield PlannedConfig(overrides=overrides, backend=backend, origin=origin, params=params, source=source,
                            campaign_keys=keys)


def read_experiment_file(path: str, origin: str) -> YamlSource:
    """An experiment file's data and lines; PlanError naming the file, line and key if it is unusable."""
    try:
        source = load_yaml(Path(path))
    except OSError as error:
        raise PlanError(f"{origin}: cannot read experiment file {path}: {error.strerror or error}") from None
    except YamlSyntaxError as error:
        where = f", line {error.line}" if error.line is not None else ""
        raise PlanError(f"experiment file {path}{where}: not valid YAML: {error.problem}") from None
    if source.data is None:
        return YamlSource(source.path, {}, {})
    if not isinstance(source.data, dict):
        raise PlanError(
            f"experiment file {path}, line {source.line_of(())}: must hold a mapping of config keys, "
            f"got {shape_name(source.data)}"
        )
    problems = shape_problems(source.data)
    if problems:
        key, problem = problems[0]
        raise PlanError(f"experiment file {path}, line {source.line_of(key)}, key '{dotted(key)}': {problem}")
    return source


def _merge_axes(base: list[Axis], top: list[Axis]) -> list[Axis]:
    """`top` axes replace `base` axes with the same key (command line beats campaign file); a
    config-group selection in `top` (e.g. `dataset=synthetic`) also drops `base` keys inside that group."""
    keys = {a.key for a in top}
    groups = tuple(f"{k}." for k in keys if k in CONFIG_GROUPS)
    return [a for a in base if a.key not in keys and not a.key.startswith(groups or ("\0",))] + top


def _lines_as_axes(lines: Iterable[str], origin: CampaignKey | None = None) -> list[Axis]:
    """Fixed overrides as one-choice axes, later lines replacing earlier ones for the same key."""
    axes: list[Axis] = []
    for line in lines:
        axes = _merge_axes(axes, [Axis(override_key(line), [line], [origin])])
    return axes


def _sets_model(axes: list[Axis]) -> bool:
    return any(a.key == "model" or a.key.startswith("model.") for a in axes)


@dataclass
class CampaignDefaults:
    """The campaign-wide model (a default) and prompt source and count (they replace experiment files')."""

    model: list[Axis]
    prompts: list[Axis]

    @classmethod
    def of(cls, campaign: CampaignSettings, model_options: set[str], dataset_options: set[str]) -> "CampaignDefaults":
        try:
            model = model_overrides(campaign.model, model_options) if campaign.model else []
            prompts = prompt_overrides(campaign.dataset, campaign.num_samples, dataset_options)
        except DefaultsError as error:
            raise PlanError(str(error)) from None
        return cls(_lines_as_axes(model, CampaignKey(("model",), campaign.model)), _lines_as_axes(prompts))

    def under(self, axes: list[Axis]) -> list[Axis]:
        """`axes` with the model default beneath them (after a backend choice) when they choose no model."""
        if _sets_model(axes) or not self.model:
            return axes
        lead = 1 if axes and axes[0].key == "backend" else 0
        return axes[:lead] + self.model + axes[lead:]


def _scoped_for(backend: str, axes: list[Axis]) -> list[Axis]:
    return [a for a in axes if _backend_has(backend, a.field)]


def _check_scoped_keys(axes: list[Axis], backends: list[str]) -> None:
    for axis in axes:
        if not any(_backend_has(b, axis.field) for b in backends):
            owners = backends_with_field(axis.field)
            where = f"; it is a parameter of {', '.join(owners)}" if owners else ""
            raise PlanError(
                f"{axis.key}: no selected backend ({', '.join(backends)}) has the parameter '{axis.field}'{where}"
            )


def _grid_value_axis(key: str, value: Any, path: KeyPath) -> Axis:
    """The axis of a campaign value at `path`: a list is swept (its items at `path[i]`), anything else fixed."""
    if isinstance(value, list):
        origins: list[CampaignKey | None] = [CampaignKey((*path, i), v) for i, v in enumerate(value)]
        return Axis(key=key, choices=[render_override(key, v) for v in value], origins=origins)
    return Axis(key=key, choices=[render_override(key, value)], origins=[CampaignKey(path, value)])


def _model_axis(models: list[str], model_options: set[str]) -> Axis:
    choices = [f"model={m}" if m in model_options else render_override("model.name", m) for m in models]
    return Axis(key="model", choices=choices, origins=[CampaignKey(("grid", "models", i), m) for i, m in enumerate(models)])


@dataclass
class CliAxes:
    """Command-line axes split by role."""

    backend: Axis | None
    scoped: list[Axis]
    generic: list[Axis]

    @classmethod
    def split(cls, axes: list[Axis]) -> "CliAxes":
        backend = next((a for a in axes if a.key == "backend"), None)
        scoped = [a for a in axes if a.is_backend_scoped]
        generic = [a for a in axes if a is not backend and not a.is_backend_scoped]
        return cls(backend, scoped, generic)

    def backend_values(self) -> list[str] | None:
        if self.backend is None:
            return None
        values = [override_value(c) for c in self.backend.choices]
        unknown = [v for v in values if v not in BACKEND_NAMES]
        if unknown:
            raise PlanError(f"backend: unknown choice(s) {unknown}; expected any of {list(BACKEND_NAMES)}")
        return values


def _grid_configs(
    campaign: CampaignSettings, cli: CliAxes, model_options: set[str], defaults: CampaignDefaults
) -> list[PlannedConfig]:
    grid = campaign.grid
    assert grid is not None
    from_cli = cli.backend_values()
    backends = from_cli or list(grid.backends)
    _check_scoped_keys(cli.scoped, backends)
    out: list[PlannedConfig] = []
    for index, backend in enumerate(backends):
        where = None if from_cli else CampaignKey(("grid", "backends", index), backend)
        axes: list[Axis] = [Axis("backend", [f"backend={backend}"], [where])]
        axes += [_model_axis(grid.models, model_options)] if grid.models else defaults.model
        axes += defaults.prompts
        grid_axes: list[Axis] = []
        for key, values in grid.shared.items():
            if key.startswith(BACKEND_PREFIX) and not _backend_has(backend, key[len(BACKEND_PREFIX) :]):
                continue
            grid_axes.append(_grid_value_axis(key, values, ("grid", "shared", key)))
        for key, values in grid.backend_overrides.get(backend, {}).items():
            full = key if key.startswith(BACKEND_PREFIX) else BACKEND_PREFIX + key
            if not _backend_has(backend, full[len(BACKEND_PREFIX) :]):
                raise PlanError(
                    f"grid.backend_overrides.{backend}.{key}: '{backend}' has no parameter "
                    f"'{full[len(BACKEND_PREFIX):]}'"
                )
            grid_axes.append(_grid_value_axis(full, values, ("grid", "backend_overrides", backend, key)))
        variants = _variants_for(grid.variants, backend) if grid.variants else [[]]
        for variant_axes in variants:
            merged = _merge_axes(_merge_axes(axes, grid_axes), variant_axes)
            merged = _merge_axes(merged, cli.generic + _scoped_for(backend, cli.scoped))
            out.extend(_product([], merged, backend, "grid"))
    if grid.variants:
        _check_variants_apply(grid.variants, backends)
    return out


def _variant_backends(variant: dict[str, Any]) -> list[str] | None:
    chosen = variant.get("backend")
    if chosen is None:
        return None
    return [str(b) for b in chosen] if isinstance(chosen, list) else [str(chosen)]


def _variant_applies(variant: dict[str, Any], backend: str) -> bool:
    """A variant belongs to a backend it names (if it names any) that has all of its backend keys: its values
    only make sense together, so a backend lacking one of them skips the whole variant."""
    named = _variant_backends(variant)
    if named is not None and backend not in named:
        return False
    return all(
        _backend_has(backend, key[len(BACKEND_PREFIX) :]) for key in variant if key.startswith(BACKEND_PREFIX)
    )


def _variants_for(variants: list[dict[str, Any]], backend: str) -> list[list[Axis]]:
    """The axes of each variant that applies to `backend`: a list value is an axis, any other value fixed."""
    out: list[list[Axis]] = []
    for index, variant in enumerate(variants):
        if not _variant_applies(variant, backend):
            continue
        out.append([
            _grid_value_axis(key, value, ("grid", "variants", index, key))
            for key, value in variant.items() if key != "backend"
        ])
    return out


def _check_variants_apply(variants: list[dict[str, Any]], backends: list[str]) -> None:
    for index, variant in enumerate(variants):
        if not any(_variant_applies(variant, b) for b in backends):
            keys = [k for k in variant if k.startswith(BACKEND_PREFIX)]
            raise PlanError(
                f"grid.variants[{index}] applies to none of the backends {backends}: it names "
                f"backend {variant.get('backend')!r} or sets {keys}, which no selected backend has all of"
            )


def _explicit_configs(
    campaign: CampaignSettings, cli: CliAxes, default_backend: str, defaults: CampaignDefaults
) -> list[PlannedConfig]:
    if cli.backend is not None:
        chosen = ",".join(override_value(c) for c in cli.backend.choices)
        raise PlanError(
            f"backend={chosen} on the command line: a campaign's configs/experiments each name their own backend, "
            "so it would not apply to them; set `backend` in those experiment files or in "
            "`experiments[].overrides`, or sweep backends with `grid.backends`"
        )
    out: list[PlannedConfig] = []
    sources: list[tuple[str | None, str, dict[str, Any], KeyPath]] = [
        (p, f"configs[{i}]", {}, ()) for i, p in enumerate(campaign.configs)
    ]
    sources += [(e.config, f"experiments[{i}]", e.overrides, ("experiments", i, "overrides"))
                for i, e in enumerate(campaign.experiments)]
    for path, origin, inline, inline_at in sources:
        source = read_experiment_file(path, origin) if path is not None else YamlSource(Path(origin), {}, {})
        from_file = experiment_file_overrides(source.data)
        own = _merge_axes(_lines_as_axes(from_file), defaults.prompts)
        # inline overrides come last and replace the file's (and the campaign's) value for their key
        for key, value in inline.items():
            line = render_override(key, value)
            own = _merge_axes(own, [Axis(override_key(line), [line], [CampaignKey((*inline_at, key), value)])])
        own = defaults.under(own)
        chosen = next((a for a in own if a.key == "backend"), None)
        backend = override_value(chosen.choices[0]) if chosen is not None else default_backend
        axes = _merge_axes(own, cli.generic + _scoped_for(backend, cli.scoped))
        where = ExperimentSource(source, frozenset(from_file)) if path is not None else None
        out.extend(_product([], axes, backend, origin, where))
    return out


def _cli_configs(cli: CliAxes, default_backend: str, defaults: CampaignDefaults) -> list[PlannedConfig]:
    backends = cli.backend_values()
    selected = backends or [default_backend]
    _check_scoped_keys(cli.scoped, selected)
    out: list[PlannedConfig] = []
    for backend in selected:
        own = _merge_axes(defaults.prompts, cli.generic)
        axes = ([Axis("backend", [f"backend={backend}"])] if backends else []) + defaults.under(own)
        axes += _scoped_for(backend, cli.scoped)
        out.extend(_product([], axes, backend, "command line"))
    return out


def expand(
    cli_axes: list[Axis],
    campaign: CampaignSettings,
    *,
    default_backend: str,
    model_options: set[str],
    dataset_options: Iterable[str] = (),
) -> list[PlannedConfig]:
    """Every distinct configuration the campaign and command line ask for, in plan order."""
    cli = CliAxes.split(cli_axes)
    defaults = CampaignDefaults.of(campaign, model_options, set(dataset_options))
    if not campaign.defines_jobs:
        return _cli_configs(cli, default_backend, defaults)
    configs: list[PlannedConfig] = []
    if campaign.grid is not None:
        configs += _grid_configs(campaign, cli, model_options, defaults)
    if campaign.configs or campaign.experiments:
        _check_scoped_keys(cli.scoped, list(BACKEND_NAMES))
        configs += _explicit_configs(campaign, cli, default_backend, defaults)
    return configs
