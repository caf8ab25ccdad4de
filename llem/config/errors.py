"""Turn Pydantic validation errors into messages a user can act on.

Each problem is one line: the dotted field, what is wrong, what was given and, for a
misspelt key, the closest valid keys. No traceback: these are user mistakes.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from llem.config.backends import BACKEND_CLASSES, backends_with_field
from llem.config.introspect import submodel as _submodel


@dataclass(frozen=True)
class Problem:
    """One validation problem: Pydantic's `loc`, the dotted key shown and what is wrong with it."""

    loc: tuple[Any, ...]
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(Exception):
    """A configuration the schemas reject; `str()` is the user-facing message.

    `problems` holds one line per problem; `details` the same problems with their `loc`
    (empty when the error did not come from a Pydantic validation).
    """

    def __init__(self, message: str, problems: list[str] | None = None, details: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.details = details or []


_SHAPES = {"dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
           "list_type": "a list"}


def shape_name(value: Any) -> str:
    """What a YAML value is, in words: a mapping, a list, a string, a number, true/false, null."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return "a string"


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, list[str]]:
    """Follow `loc` through nested models; return the model reached and the dotted path without union tags."""
    current: type[BaseModel] | None = model
    path: list[str] = []
    i = 0
    while i < len(loc) and current is not None:
        part = loc[i]
        if isinstance(part, int):
            path[-1:] = [f"{path[-1]}[{part}]"] if path else [f"[{part}]"]
            i += 1
            continue
        field = current.model_fields.get(str(part))
        path.append(str(part))
        if field is None:
            return None, path + [str(p) for p in loc[i + 1 :]]
        nxt = loc[i + 1] if i + 1 < len(loc) else None
        tagged = _submodel(field.annotation, nxt) if isinstance(nxt, str) else None
        if tagged is not None and nxt not in tagged.model_fields:  # `nxt` is a union tag, not a field
            current = tagged
            i += 2
            continue
        current = _submodel(field.annotation)
        i += 1
    for part in loc[i:]:  # inside a plain mapping or list (`grid.shared.fp_precision`, `configs[1]`)
        if isinstance(part, int):
            path[-1:] = [f"{path[-1]}[{part}]"] if path else [f"[{part}]"]
        else:
            path.append(str(part))
    return current, path


def _describe(model: type[BaseModel], err: dict[str, Any]) -> Problem:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    message = str(err.get("msg", "")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        parent, path = _walk(model, loc[:-1])
        key = str(loc[-1])
        where = ".".join(path + [key])
        text = "unknown key"
        if parent is not None:
            if parent in BACKEND_CLASSES.values():
                backend = typing.get_args(parent.model_fields["name"].annotation)[0]
                owners = backends_with_field(key)
                text += f" for backend '{backend}'"
                if owners:
                    text += f" (it is a parameter of {', '.join(owners)})"
            close = difflib.get_close_matches(key, list(parent.model_fields), n=3)
            if close:
                text += f"; did you mean {' or '.join(repr(c) for c in close)}?"
            else:
                text += f"; valid keys: {', '.join(sorted(parent.model_fields))}"
        return Problem(loc, where, text)
    _, path = _walk(model, loc)
    where = ".".join(path)
    if kind == "union_tag_invalid":
        expected = err.get("ctx", {}).get("expected_tags", "")
        tag = err.get("ctx", {}).get("tag")
        return Problem(loc, f"{where}.{_tag_key(model, loc)}", f"unknown choice {tag!r}; expected one of {expected}")
    if kind == "union_tag_not_found":
        return Problem(loc, where, f"missing discriminator key {err.get('ctx', {}).get('discriminator')}")
    if kind == "missing":
        return Problem(loc, where, "required field is missing")
    if kind in _SHAPES and "input" in err:
        text = f"expected {_SHAPES[kind]}, got {shape_name(err['input'])}"
        if not isinstance(err["input"], (dict, list, tuple)):
            text += f" ({err['input']!r})"
        return Problem(loc, where, text)
    text = message
    if "input" in err and kind not in ("value_error", "assertion_error") and not isinstance(err["input"], dict):
        text += f" (got {err['input']!r})"
    return Problem(loc, where, text)


def _tag_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The discriminator key ('name' or 'source') of the union at `loc`."""
    parent, _ = _walk(model, loc[:-1])
    field = parent.model_fields.get(str(loc[-1])) if parent is not None and loc else None
    member = _submodel(field.annotation) if field is not None else None
    return "source" if member is not None and "source" in member.model_fields else "name"


def problems_of(model: type[BaseModel], error: ValidationError) -> list[Problem]:
    """Every problem with its `loc`, in the order Pydantic found them."""
    return [_describe(model, e) for e in error.errors(include_url=False)]


def describe_errors(model: type[BaseModel], error: ValidationError) -> list[str]:
    """One line per problem, in the order Pydantic found them."""
    return [str(p) for p in problems_of(model, error)]


def invalid_message(context: str, problems: list[str]) -> str:
    """`Invalid <context> (N problems):` and one indented line per problem."""
    lines = [f"Invalid {context} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def validate_or_raise(model: type[BaseModel], data: Any, *, context: str) -> Any:
    """Validate `data` as `model`; raise ConfigError whose message names `context` and every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        details = problems_of(model, error)
        problems = [str(p) for p in details]
        raise ConfigError(invalid_message(context, problems), problems, details) from None
