"""Express a standalone experiment YAML as ordinary Hydra overrides on top of the primary config.

Sections with a discriminator (`backend.name`, `dataset.source`) become config-group
selections, nested sections become dotted keys; keys the schema does not know are
added with `+` so validation reports them by name instead of Hydra refusing them.

A section given something other than a mapping is refused here, with the file's line and
key, before Hydra would refuse the override it becomes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from llem.config.errors import shape_name
from llem.config.experiment import ExperimentConfig
from llem.config.introspect import field_model
from llem.config.yaml_source import KeyPath
from llem.plan.values import render_override

GROUP_DISCRIMINATORS = {"backend": "name", "dataset": "source"}
CONFIG_GROUPS = ("backend", "dataset", "model")
NOT_EXPERIMENT = ("hydra", "campaign")


def _defaults_overrides(defaults: Any) -> list[str]:
    out: list[str] = []
    for entry in defaults or []:
        if isinstance(entry, dict):
            for group, option in entry.items():
                group = str(group).removeprefix("override ").strip()
                if option is not None:
                    out.append(f"{group}={option}")
    return out


def _flatten(prefix: str, value: Any, model: type[BaseModel] | None, parent: type[BaseModel] | None, out: list[str]) -> None:
    if isinstance(value, dict) and model is not None:
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}", sub, field_model(model, key), model, out)
        return
    leaf = prefix.rsplit(".", 1)[-1]
    known = parent is not None and leaf in parent.model_fields
    out.append(render_override(prefix if known else f"+{prefix}", value))


def experiment_file_overrides(data: dict[str, Any]) -> list[str]:
    """Overrides that reproduce `data` (an experiment YAML) on top of the primary config."""
    data = dict(data)
    out = _defaults_overrides(data.pop("defaults", None))
    for key in NOT_EXPERIMENT:
        data.pop(key, None)
    for key, value in data.items():
        disc = GROUP_DISCRIMINATORS.get(key)
        if disc and isinstance(value, dict) and value.get(disc) is not None:
            tag = value[disc]
            out.append(f"{key}={tag}")
            section = field_model(ExperimentConfig, key, tag)
            for sub_key, sub_value in value.items():
                if sub_key != disc:
                    _flatten(f"{key}.{sub_key}", sub_value, field_model(section, sub_key), section, out)
            continue
        _flatten(key, value, field_model(ExperimentConfig, key), ExperimentConfig, out)
    return out


def shape_problems(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """Sections of an experiment file given something other than a mapping, as (key path, problem).

    A config-group section (`backend`, `dataset`, `model`) may also name an option (`backend: vllm`).
    """
    out: list[tuple[KeyPath, str]] = []
    for key, value in data.items():
        if key in NOT_EXPERIMENT or key == "defaults" or value is None or isinstance(value, dict):
            continue
        if not isinstance(key, str) or field_model(ExperimentConfig, key) is None:
            continue  # a leaf or an unknown key: validation names it
        if key in CONFIG_GROUPS:
            if isinstance(value, (list, tuple)):
                out.append(((key,), "expected a mapping or the name of an option, got a list"))
            continue
        shown = "" if isinstance(value, (list, tuple)) else f" ({value!r})"
        out.append(((key,), f"expected a mapping, got {shape_name(value)}{shown}"))
    return out
