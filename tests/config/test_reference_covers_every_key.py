"""Every key any schema accepts has an entry in the generated reference, in the section for its path."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from llem.config import CampaignConfig, ExperimentConfig
from llem.config.reference import SECTIONS, render


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every BaseModel class in an annotation (each member of a union, list items, Optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _sections(model: type[BaseModel], path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """(dotted path, model) of `model` and of every section model reachable from it."""
    yield path, model
    for name, field in model.model_fields.items():
        list_like = typing.get_origin(field.annotation) is list or any(
            typing.get_origin(a) is list for a in typing.get_args(field.annotation)
        )
        for sub in _models_in(field.annotation):
            yield from _sections(sub, f"{path}.{name}{'[]' if list_like else ''}".lstrip("."))


def _reference_sections() -> dict[str, tuple[str, str]]:
    """Title -> (the 'Key:' line's path, the section's text)."""
    text = render()
    out = {}
    for title, _, _ in SECTIONS:
        body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        key = body.split("Key: `", 1)[1].split("`", 1)[0].split(" ", 1)[0]
        out[title] = (key, body)
    return out


def test_every_leaf_key_of_every_schema_is_in_its_section() -> None:
    sections = _reference_sections()
    roots = [("", ExperimentConfig), ("campaign", CampaignConfig)]
    checked = set()
    for root, schema in roots:
        for path, model in _sections(schema, root):
            titles = [t for t, _, m in SECTIONS if m is model]
            assert titles, f"{path or '(top level)'}: no section for {model.__name__} in the reference"
            shown = path or "(top"
            matching = [t for t in titles if sections[t][0] == shown]
            assert matching, f"{model.__name__}: its section names key {[sections[t][0] for t in titles]}, not {shown}"
            for name in model.model_fields:
                assert f"| `{name}` |" in sections[matching[0]][1], f"{path}.{name} is missing from the reference"
                checked.add(f"{path}.{name}".lstrip("."))
    # the keys this reference once left out, and a few from every depth
    assert {"measure.min_window_seconds", "measure.phase_split", "backend.max_num_seqs", "dataset.input_tokens",
            "campaign.grid.shared", "campaign.experiments[].overrides", "campaign.daemon.interval"} <= checked
