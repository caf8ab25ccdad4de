"""Turn Pydantic validation errors into messages a user can act on.

Each problem is one line: the dotted field, what is wrong, what was given and, for a
misspelt key, the closest valid keys. No traceback: these are user mistakes.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from llem.config.backends import BACKEND_CLASSES, backends_with_field
from llem.config.introspect import submodel as _submodel


class ConfigError(Exception):
    """A configuration the schemas reject; `str()` is the user-facing message."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


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
    return current, path


def _describe(model: type[BaseModel], err: dict[str, Any]) -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    message = str(err.get("msg", "")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        parent, path = _walk(model, loc[:-1])
        key = str(loc[-1])
        where = ".".join(path + [key])
        text = f"{where}: unknown key"
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
        return text
    _, path = _walk(model, loc)
    where = ".".join(path)
    if kind == "union_tag_invalid":
        expected = err.get("ctx", {}).get("expected_tags", "")
        return f"{where}.{_tag_key(model, loc)}: unknown choice {err.get('ctx', {}).get('tag')!r}; expected one of {expected}"
    if kind == "union_tag_not_found":
        return f"{where}: missing discriminator key {err.get('ctx', {}).get('discriminator')}"
    if kind == "missing":
        return f"{where}: required field is missing"
    text = f"{where}: {message}" if where else message
    if "input" in err and kind not in ("value_error", "assertion_error") and not isinstance(err["input"], dict):
        text += f" (got {err['input']!r})"
    return text


def _tag_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The discriminator key ('name' or 'source') of the union at `loc`."""
    parent, _ = _walk(model, loc[:-1])
    field = parent.model_fields.get(str(loc[-1])) if parent is not None and loc else None
    member = _submodel(field.annotation) if field is not None else None
    return "source" if member is not None and "source" in member.model_fields else "name"


def describe_errors(model: type[BaseModel], error: ValidationError) -> list[str]:
    """One line per problem, in the order Pydantic found them."""
    return [_describe(model, e) for e in error.errors(include_url=False)]


def validate_or_raise(model: type[BaseModel], data: Any, *, context: str) -> Any:
    """Validate `data` as `model`; raise ConfigError whose message names `context` and every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = describe_errors(model, error)
        lines = [f"Invalid {context} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in problems]
        raise ConfigError("\n".join(lines), problems) from None
