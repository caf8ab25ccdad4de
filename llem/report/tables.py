"""The report's neutral table and number formatting, drawn alike by the Markdown and HTML renderers.

It sits below both the renderer and the decision tables, so neither has to import the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str | None = None


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers to 4 significant digits; missing values as an em dash, never 0."""
    if value is None or value is pd.NA:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return _significant(value, digits) if isinstance(value, float) else str(value)
    try:
        if pd.isna(value):
            return "—"
    except (TypeError, ValueError):
        pass
    return str(value)


def _significant(value: float, digits: int) -> str:
    """Fixed notation for everyday magnitudes (1e-3 to 1e6), scientific outside them."""
    if value == 0 or math.isinf(value):
        return str(value)
    magnitude = math.floor(math.log10(abs(value)))
    if -3 <= magnitude < 6:
        return f"{value:.{max(0, digits - 1 - magnitude)}f}"
    return f"{value:.{digits - 1}e}"
