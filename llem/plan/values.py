"""Render typed values as Hydra override values, so a planned job is an ordinary command line."""

from __future__ import annotations

import math
import re
from typing import Any

# Characters Hydra's grammar accepts in an unquoted primitive that we are sure of.
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./:\-+@]*$")
_KEYWORDS = {"null", "true", "false", "inf", "nan", "-inf", "+inf"}
_FUNCTION_LIKE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\(")


def _quote(text: str) -> str:
    """Hydra escapes backslashes only before a quote or at the end of a quoted string."""
    doubled = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + doubled.replace("'", "\\'") + "'"


def render_value(value: Any) -> str:
    """The override text that Hydra parses back to `value` (strings quoted when needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        plain = _PLAIN.match(value) and value.lower() not in _KEYWORDS and not _FUNCTION_LIKE.match(value)
        return value if plain else _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{render_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot express {type(value).__name__} value {value!r} as a Hydra override")


def render_override(key: str, value: Any) -> str:
    return f"{key}={render_value(value)}"
