"""LLenergyMeasure study files (`sweep:`, `experiments:`, `base:`) as llem campaign data.

A study names its experiment settings with LLenergyMeasure's keys (`n`, `precision: bf16`,
`pytorch.batch_size`, `vllm.engine.max_num_seqs`, ...). Each key is mapped to llem's own key
here, in one table, so a study runs as the same grid under llem. A key llem has no
counterpart for is refused with the key's place in the file and what llem offers instead,
never dropped: a study that silently ran something else would measure the wrong thing.

The mapping:
- shared experiment fields (and the `base:` file beneath them) become one-value grid axes,
  or the campaign-wide `model`, `dataset` and `num_samples`;
- `sweep:` keys become grid axes; engine-scoped keys become per-backend axes; a key whose
  value is a list of dicts is a group of dependent settings and becomes `grid.variants`
  (several such groups are crossed with each other);
- `experiments:` entries become explicit experiments given as overrides;
- `execution:` maps to `campaign.execution`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llem.config.backends import BACKEND_CLASSES, BACKEND_NAMES
from llem.config.yaml_source import KeyPath

STUDY_ONLY = ("sweep", "experiments", "base", "name", "execution", "runners")
ENGINE_KEYS = ("backend", "engine")
ENGINE_ALIASES = {"transformers": "pytorch", "pytorch": "pytorch", "vllm": "vllm", "tensorrt": "tensorrt",
                  "tensorrt_llm": "tensorrt"}
# experiment keys that say the file is a study rather than a llem campaign
STUDY_MARKERS = ("sweep", "base", "name", "backend", "engine", "n", "precision", "pytorch", "transformers",
                 "vllm", "tensorrt", "decoder", "warmup", "baseline", "energy", "max_input_tokens",
                 "max_output_tokens", "random_seed")

_PRECISION = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16",
              "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
_ENERGY_SOURCE = {"auto": "auto", "nvml": "nvml", None: "none"}
_CYCLE_ORDER = {"sequential": "grouped", "interleaved": "interleaved", "shuffled": "shuffled",
                "reverse": "reverse", "latin_square": "latin_square"}
_DATASET_ALIASES = {"aienergyscore": "ai_energy_score"}

# LLenergyMeasure experiment key -> llem key (same meaning; values that need translating are handled below)
_FIELDS: dict[str, str] = {
    "model": "model.name",
    "n": "num_input_prompts",
    "precision": "fp_precision",
    "dtype": "fp_precision",
    "max_input_tokens": "max_input_tokens",
    "max_output_tokens": "max_output_tokens",
    "random_seed": "random_seed",
    "decoder.do_sample": "decoder.do_sample",
    "decoder.temperature": "decoder.temperature",
    "decoder.top_p": "decoder.top_p",
    "decoder.top_k": "decoder.top_k",
    "decoder.repetition_penalty": "decoder.repetition_penalty",
    "warmup.n_warmup": "warmup.num_prompts",
    "warmup.enabled": "warmup.num_prompts",
    "warmup.thermal_floor_seconds": "warmup.thermal_floor_seconds",
    "warmup.convergence_detection": "warmup.mode",
    "warmup.cv_threshold": "warmup.cv_threshold",
    "warmup.window_size": "warmup.window",
    "warmup.min_prompts": "warmup.min_batches",
    "warmup.max_prompts": "warmup.max_batches",
    "baseline.enabled": "baseline.enabled",
    "baseline.duration_seconds": "baseline.duration_seconds",
    "baseline.strategy": "baseline.strategy",
    "baseline.cache_ttl_seconds": "baseline.cache_ttl_seconds",
    "baseline.validation_interval": "baseline.validation_interval",
    "baseline.drift_threshold": "baseline.drift_threshold",
    "energy.backend": "energy.source",
}
_EXECUTION: dict[str, str] = {
    "n_cycles": "cycles",
    "cycle_order": "structure",
    "shuffle_seed": "shuffle_seed",
    "experiment_gap_seconds": "config_gap_seconds",
    "config_gap_seconds": "config_gap_seconds",
    "cycle_gap_seconds": "cycle_gap_seconds",
    "max_consecutive_failures": "max_consecutive_failures",
    "circuit_breaker_cooldown_seconds": "circuit_breaker_cooldown_seconds",
    "wall_clock_timeout_hours": "wall_clock_timeout_hours",
}
# engine sections whose keys sit one level further down in LLenergyMeasure (vllm.engine.max_num_seqs)
_ENGINE_SUBSECTIONS = {"vllm": ("engine",)}


class StudyFileError(ValueError):
    """A study key llem cannot map; `key` is its path in the file."""

    def __init__(self, key: KeyPath, message: str) -> None:
        super().__init__(message)
        self.key = key


def is_study(data: dict[str, Any]) -> bool:
    """Whether campaign-file data is a LLenergyMeasure study rather than a campaign file."""
    if any(k in data for k in STUDY_MARKERS):
        return True
    experiments = data.get("experiments")
    return isinstance(experiments, list) and any(
        isinstance(e, dict) and "config" not in e and "overrides" not in e for e in experiments
    )


@dataclass(frozen=True)
class Mapped:
    """One study setting in llem's terms: the key, the value, and the engine it is scoped to (None: all)."""

    key: str
    value: Any
    engine: str | None = None


def _flatten(data: dict[str, Any], path: KeyPath = ()) -> Iterable[tuple[KeyPath, Any]]:
    """Nested sections as (key path, leaf value); a dotted key counts as its parts."""
    for key, value in data.items():
        parts = (*path, *str(key).split("."))
        if isinstance(value, dict) and value:
            yield from _flatten(value, parts)
        else:
            yield parts, value


def _engine_field(parts: tuple[str, ...], where: KeyPath) -> tuple[str, str] | None:
    """(llem backend, field) for an engine-scoped key such as pytorch.batch_size or vllm.engine.block_size."""
    engine = ENGINE_ALIASES.get(parts[0])
    if engine is None or len(parts) < 2:
        return None
    rest = parts[1:]
    if rest[0] in _ENGINE_SUBSECTIONS.get(parts[0], ()):
        rest = rest[1:]
    name = ".".join(rest)
    if len(rest) != 1 or rest[0] not in BACKEND_CLASSES[engine].model_fields or rest[0] == "name":
        known = [f for f in BACKEND_CLASSES[engine].model_fields if f != "name"]
        raise StudyFileError(where, f"'{'.'.join(parts)}' has no counterpart in llem's {engine} backend "
                             f"('{name}' is not one of its parameters: {', '.join(known)})")
    return engine, rest[0]


def map_value(parts: tuple[str, ...], value: Any, where: KeyPath) -> Mapped:
    """One LLenergyMeasure key and value as llem's."""
    dotted = ".".join(parts)
    if parts[0] in ENGINE_KEYS and len(parts) == 1:
        engine = ENGINE_ALIASES.get(str(value))
        if engine is None:
            raise StudyFileError(where, f"{dotted}: unknown engine {value!r}; llem runs {list(BACKEND_NAMES)}")
        return Mapped("backend", engine)
    scoped = _engine_field(parts, where)
    if scoped is not None:
        engine, name = scoped
        return Mapped(f"backend.{name}", value, engine)
    target = _FIELDS.get(dotted)
    if target is None:
        raise StudyFileError(where, f"'{dotted}' has no counterpart in llem; its experiment settings are listed "
                             "in docs/configuration.md")
    if target == "fp_precision":
        if value not in _PRECISION:
            raise StudyFileError(where, f"{dotted}: expected one of {sorted(_PRECISION)}, got {value!r}")
        value = _PRECISION[value]
    elif dotted == "warmup.enabled":
        if value is not False:
            raise StudyFileError(where, "warmup.enabled: only `false` has a counterpart (warmup.num_prompts: 0); "
                                 "leave it out to warm up")
        value = 0
    elif target == "warmup.mode":
        value = "converged" if value else "fixed"
    elif target == "energy.source":
        if value not in _ENERGY_SOURCE:
            raise StudyFileError(where, f"energy.backend: {value!r} has no counterpart; llem measures with "
                                 "auto, nvml or none (null)")
        value = _ENERGY_SOURCE[value]
    return Mapped(target, value)


def _mapped_fields(section: dict[str, Any], where: KeyPath) -> list[Mapped]:
    out = []
    for parts, value in _flatten(section):
        out.append(map_value(parts, value, (*where, *parts)))
    return out


def _experiment_fields(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in STUDY_ONLY}


def _execution(section: Any, where: KeyPath) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise StudyFileError(where, "execution: expected a mapping")
    out: dict[str, Any] = {}
    for key, value in section.items():
        target = _EXECUTION.get(key)
        if target is None:
            raise StudyFileError((*where, key), f"execution.{key} has no counterpart in llem's campaign.execution "
                                 f"(it has: {', '.join(sorted(set(_EXECUTION.values())))})")
        if target == "structure":
            if value not in _CYCLE_ORDER:
                raise StudyFileError((*where, key), f"execution.cycle_order: expected one of {sorted(_CYCLE_ORDER)}, "
                                     f"got {value!r}")
            value = _CYCLE_ORDER[value]
        out[target] = value
    return out


def _runners(section: Any, where: KeyPath) -> None:
    if section is None:
        return
    if not isinstance(section, dict):
        raise StudyFileError(where, "runners: expected a mapping of engine to runner")
    for engine, runner in section.items():
        if runner != "local":
            raise StudyFileError((*where, engine), f"runners.{engine}: {runner!r} has no counterpart in a study "
                                 "file; choose the launcher on the command line instead "
                                 "(hydra/launcher=llem_container, with its images in hydra.launcher.images)")


def _variant(entry: dict[str, Any], where: KeyPath) -> dict[str, Any]:
    """One entry of a dependent group as a llem variant: llem keys, a list value a small axis of its own."""
    variant: dict[str, Any] = {}
    engines: set[str] = set()
    for parts, value in _flatten(entry):
        values = value if isinstance(value, list) else [value]
        mapped = [map_value(parts, v, (*where, *parts)) for v in values]
        key = mapped[0].key
        if key == "backend":
            engines.update(m.value for m in mapped)
            continue
        if mapped[0].engine is not None:
            engines.add(mapped[0].engine)
        variant[key] = [m.value for m in mapped] if isinstance(value, list) else mapped[0].value
    if len(engines) > 1:
        raise StudyFileError(where, f"a group entry mixes settings of several engines ({sorted(engines)})")
    if engines:
        variant["backend"] = engines.pop()
    return variant


def _combine(groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Several dependent groups crossed: one variant per combination of their entries (a later group's value wins),
    leaving out combinations whose entries belong to different engines."""
    out: list[dict[str, Any]] = []
    for combo in itertools.product(*groups):
        merged: dict[str, Any] = {}
        engine = None
        for part in combo:
            if "backend" in part:
                if engine is not None and part["backend"] != engine:
                    break
                engine = part["backend"]
            merged.update(part)
        else:
            if merged not in out:
                out.append(merged)
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def study_to_campaign(data: dict[str, Any], base: Path, read_base: Any) -> dict[str, Any]:
    """Campaign data for a study. `read_base(path) -> dict` reads the `base:` experiment file."""
    out: dict[str, Any] = {}
    if "name" in data:
        out["campaign_name"] = data["name"]
    _runners(data.get("runners"), ("runners",))
    execution = _execution(data.get("execution"), ("execution",))
    if execution:
        out["execution"] = execution

    fixed: list[Mapped] = []
    dataset: tuple[KeyPath, Any] | None = None
    if data.get("base") is not None:
        base_data = _experiment_fields(read_base(base / str(data["base"])))
        if "dataset" in base_data:
            dataset = (("base",), base_data.pop("dataset"))
        fixed += [map_value(parts, value, ("base",)) for parts, value in _flatten(base_data)]
    own = _experiment_fields(data)
    if "dataset" in own:
        dataset = (("dataset",), own.pop("dataset"))
    fixed += [map_value(parts, value, parts) for parts, value in _flatten(own)]
    settings: dict[str, Mapped] = {m.key: m for m in fixed}  # the study's own fields win over its base

    default_engine = settings.pop("backend").value if "backend" in settings else "pytorch"
    model = settings.pop("model.name", None)
    if model is not None:
        out["model"] = model.value
    if dataset is not None:
        where, value = dataset
        if not isinstance(value, str):
            raise StudyFileError(where, "dataset: only a named dataset has a counterpart in llem (a synthetic "
                                 "section does not; use `dataset: synthetic` and its settings in llem's keys)")
        out["dataset"] = _DATASET_ALIASES.get(value, value)
    count = settings.pop("num_input_prompts", None)
    if count is not None:
        out["num_samples"] = count.value

    sweep = data.get("sweep")
    if sweep is not None and not isinstance(sweep, dict):
        raise StudyFileError(("sweep",), "sweep: expected a mapping of keys to lists of values")
    if sweep or not data.get("experiments"):
        out["grid"] = _grid(sweep or {}, settings, default_engine, out)
    if data.get("experiments"):
        out["experiments"] = _experiments(data["experiments"], settings, default_engine)
    return out


def _grid(sweep: dict[str, Any], settings: dict[str, Mapped], default_engine: str,
          out: dict[str, Any]) -> dict[str, Any]:
    backends: list[str] = [default_engine]
    shared: dict[str, list[Any]] = {}
    per_engine: dict[str, dict[str, list[Any]]] = {}
    groups: list[list[dict[str, Any]]] = []
    swept_engine_keys: list[tuple[KeyPath, str]] = []
    for key, values in sweep.items():
        where: KeyPath = ("sweep", key)
        if isinstance(values, list) and values and all(isinstance(v, dict) for v in values):
            groups.append([_variant(entry, (*where, i)) for i, entry in enumerate(values)])
            continue
        parts = tuple(str(key).split("."))
        mapped = [map_value(parts, v, where) for v in _as_list(values)]
        target = mapped[0].key
        if target == "backend":
            backends = list(dict.fromkeys(m.value for m in mapped))
        elif target == "model.name":
            out.pop("model", None)
            out.setdefault("_models", [m.value for m in mapped])
        elif target == "num_input_prompts":
            out.pop("num_samples", None)
            shared[target] = [m.value for m in mapped]
        elif mapped[0].engine is not None:
            per_engine.setdefault(mapped[0].engine, {})[target[len("backend."):]] = [m.value for m in mapped]
            swept_engine_keys.append((where, mapped[0].engine))
        else:
            shared[target] = [m.value for m in mapped]
    for where, engine in swept_engine_keys:
        if engine not in backends:
            raise StudyFileError(where, f"{'.'.join(map(str, where[1:]))} is a {engine} setting, but the study runs "
                                 f"{backends}")
    for key, mapped in settings.items():
        if mapped.engine is not None:
            if mapped.engine in backends:  # an engine section the study does not run is ignored, as it is there
                per_engine.setdefault(mapped.engine, {}).setdefault(key[len("backend."):], [mapped.value])
        else:
            shared.setdefault(key, [mapped.value])
    grid: dict[str, Any] = {"backends": backends}
    models = out.pop("_models", None)
    if models:
        grid["models"] = models
    if shared:
        grid["shared"] = shared
    if per_engine:
        grid["backend_overrides"] = per_engine
    if groups:
        grid["variants"] = _combine(groups)
    return grid


def _experiments(entries: Any, settings: dict[str, Mapped], default_engine: str) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise StudyFileError(("experiments",), "experiments: expected a list of experiment settings")
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        where: KeyPath = ("experiments", index)
        if not isinstance(entry, dict):
            raise StudyFileError(where, "expected a mapping of experiment settings")
        own = [map_value(parts, value, (*where, *parts)) for parts, value in _flatten(entry)]
        chosen = next((m.value for m in own if m.key == "backend"), default_engine)
        overrides: dict[str, Any] = {"backend": chosen}
        for mapped in [*settings.values(), *own]:  # the entry's own settings win over the shared ones
            if mapped.key == "backend" or (mapped.engine is not None and mapped.engine != chosen):
                continue
            overrides[mapped.key] = mapped.value
        out.append({"overrides": overrides})
    return out
