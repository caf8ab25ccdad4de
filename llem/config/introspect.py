"""Find the model class behind a field, so tools can walk the schemas by key."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel


def _tag_matches(model: type[BaseModel], tag: Any) -> bool:
    for field in ("name", "source"):
        if field in model.model_fields and typing.get_args(model.model_fields[field].annotation) == (tag,):
            return True
    return False


def submodel(annotation: Any, tag: Any = None) -> type[BaseModel] | None:
    """The BaseModel class behind an annotation (unwrapping Optional, Annotated and unions).

    With `tag`, pick the union member whose discriminator (`name` or `source`) equals it.
    """
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation if tag is None or _tag_matches(annotation, tag) else None
    for arg in typing.get_args(annotation):
        found = submodel(arg, tag)
        if found is not None:
            return found
    return None


def field_model(model: type[BaseModel] | None, key: str, tag: Any = None) -> type[BaseModel] | None:
    """The section model of `model.key` (None for a leaf or an unknown key)."""
    if model is None or key not in model.model_fields:
        return None
    return submodel(model.model_fields[key].annotation, tag)
