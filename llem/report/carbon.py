"""Energy turned into emissions and money, with every factor's source shown.

There is no built-in grid intensity, PUE or price: a guessed factor would give a
made-up figure. Each one the user gives (`--carbon-intensity`, `--pue`,
`--price-per-kwh`, or the campaign's `campaign.report` keys, recorded in its
manifest) is carried with where it came from, the command line winning, and a figure
that needs a factor nobody gave is not shown. PUE scales the measured (device) energy to what the
facility drew; without it, device energy is used as it is and the source says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from llem.report.frontier import ENERGY, config_points, usable

J_PER_KWH = 3.6e6
COMMAND_LINE = "command line"
CAMPAIGN = "campaign settings: campaign.report"
# campaign.report key -> (command-line option, Factors field, smallest valid value)
CAMPAIGN_KEYS: dict[str, tuple[str, str, float]] = {
    "carbon_intensity": ("--carbon-intensity", "carbon_g_per_kwh", 0.0),
    "pue": ("--pue", "pue", 1.0),
    "price_per_kwh": ("--price-per-kwh", "price_per_kwh", 0.0),
}


class BadFactor(ValueError):
    """A carbon or cost factor that is not a positive finite number."""


@dataclass(frozen=True)
class Factor:
    value: float
    source: str


@dataclass(frozen=True)
class Factors:
    """What the user gave; None: not given, so the figures that need it are not computed."""

    carbon_g_per_kwh: Factor | None = None
    pue: Factor | None = None
    price_per_kwh: Factor | None = None

    @classmethod
    def from_values(cls, carbon: float | None = None, pue: float | None = None, price: float | None = None,
                    source: str = COMMAND_LINE) -> Factors:  # fmt: skip
        values = dict(zip(CAMPAIGN_KEYS, (carbon, pue, price)))
        return cls(**{field: _factor(option, values[key], minimum, source)
                      for key, (option, field, minimum) in CAMPAIGN_KEYS.items()})  # fmt: skip

    @classmethod
    def from_campaign(cls, report: Mapping[str, Any] | None) -> Factors:
        """The factors a campaign's `campaign.report` section gave (its manifest's `report`), each sourced to it."""
        report = report or {}
        return cls(**{field: _factor(f"campaign.report.{key}", report.get(key), minimum, CAMPAIGN)
                      for key, (_, field, minimum) in CAMPAIGN_KEYS.items()})  # fmt: skip

    def over(self, fallback: Factors) -> Factors:
        """These factors, each one not given here taken from `fallback` (the command line over the campaign)."""
        return Factors(*(mine if mine is not None else theirs for mine, theirs in (
            (self.carbon_g_per_kwh, fallback.carbon_g_per_kwh), (self.pue, fallback.pue),
            (self.price_per_kwh, fallback.price_per_kwh))))  # fmt: skip

    @property
    def any(self) -> bool:
        return any(f is not None for f in (self.carbon_g_per_kwh, self.price_per_kwh))

    def sources(self) -> list[str]:
        out = []
        if self.carbon_g_per_kwh:
            out.append(f"carbon intensity {self.carbon_g_per_kwh.value:g} gCO2e/kWh ({self.carbon_g_per_kwh.source})")
        out.append(f"PUE {self.pue.value:g} ({self.pue.source})" if self.pue else "PUE not given: device energy only")
        if self.price_per_kwh:
            out.append(f"price {self.price_per_kwh.value:g} per kWh ({self.price_per_kwh.source})")
        return out


def _factor(name: str, value: Any, minimum: float, source: str) -> Factor | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise BadFactor(f"{name} must be a number ≥ {minimum:g}, got {value!r}")
    return Factor(float(value), source)


def per_config(frame: pd.DataFrame, factors: Factors) -> pd.DataFrame:
    """Per configuration: kWh, gCO2e and cost per 1,000 output tokens and per 1,000 requests (NaN: not given)."""
    rows, _ = usable(frame)
    work = rows.copy()
    # energy per request: energy above idle over the window's requests (requests_per_s x duration)
    requests = pd.to_numeric(work["requests_per_s"], errors="coerce") * pd.to_numeric(
        work["duration_s"], errors="coerce"
    )
    work["energy_per_request_j"] = pd.to_numeric(work["energy_adjusted_j"], errors="coerce") / requests
    points = config_points(work, [ENERGY, "energy_per_request_j"])
    pue = factors.pue.value if factors.pue else 1.0
    out = points[["config_hash", "backend", ENERGY, "energy_per_request_j"]].copy()
    out["kwh_per_1k_tokens"] = out[ENERGY] * 1000 * pue / J_PER_KWH
    out["kwh_per_1k_requests"] = out["energy_per_request_j"] * 1000 * pue / J_PER_KWH
    nan = float("nan")
    g = factors.carbon_g_per_kwh.value if factors.carbon_g_per_kwh else nan
    price = factors.price_per_kwh.value if factors.price_per_kwh else nan
    out["gco2e_per_1k_tokens"] = out["kwh_per_1k_tokens"] * g
    out["gco2e_per_1k_requests"] = out["kwh_per_1k_requests"] * g
    out["cost_per_1k_tokens"] = out["kwh_per_1k_tokens"] * price
    out["cost_per_1k_requests"] = out["kwh_per_1k_requests"] * price
    return out
