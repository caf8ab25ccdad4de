"""Idle-power baseline and the arithmetic that subtracts it.

Idle draw is a sizeable share of small-batch energy and is paid whether or not
the model runs, so llem reports both raw energy and energy above idle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llem.energy.meters.base import EnergyMeter, EnergyWindow


@dataclass
class BaselineResult:
    source: str
    duration_s: float
    total_w: float | None
    per_device_w: dict[str, float | None]
    unavailable_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_baseline(
    meter: EnergyMeter,
    duration_s: float,
    sleep: Callable[[float], None] = time.sleep,
    *,
    window_name: str = "baseline",
) -> BaselineResult:
    """Average idle power over `duration_s` of doing nothing (energy / measured duration)."""
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    meter.begin_window(window_name)
    try:
        sleep(duration_s)
    finally:
        window = meter.end_window(window_name)
    return baseline_from_window(window)


def baseline_from_window(window: EnergyWindow) -> BaselineResult:
    d = window.duration_s
    if d <= 0:
        none = {k: None for k in window.per_device}
        return BaselineResult(window.source, d, None, none, "baseline window has no duration")
    per = {k: (None if v is None else v / d) for k, v in window.per_device.items()}
    total = None if window.total_j is None else window.total_j / d
    return BaselineResult(
        source=window.source,
        duration_s=d,
        total_w=total,
        per_device_w=per,
        unavailable_reason=window.unavailable_reason if total is None else None,
    )


def adjusted_energy_j(raw_j: float | None, baseline_w: float | None, duration_s: float) -> float | None:
    """Energy above idle, clamped at 0; None when either input is missing (never the raw figure)."""
    if raw_j is None or baseline_w is None:
        return None
    return max(0.0, raw_j - baseline_w * duration_s)


def energy_per_token_j(adjusted_j: float | None, output_tokens: int | None) -> float | None:
    if adjusted_j is None or output_tokens is None or output_tokens <= 0:
        return None
    return adjusted_j / output_tokens


@dataclass
class AdjustedEnergy:
    """A window's energy with the idle baseline removed, per device and in total."""

    total_j: float | None
    per_device_j: dict[str, float | None]
    clamped: list[str] = field(default_factory=list)  # keys whose raw energy was below idle
    unavailable_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def adjust_window(window: EnergyWindow, baseline: BaselineResult | None) -> AdjustedEnergy:
    """Apply `adjusted_energy_j` to every device and the total of `window`.

    The total uses the total baseline, so it may differ from the sum of the
    per-device figures when one of them is clamped at 0.
    """
    if baseline is None:
        return AdjustedEnergy(None, {k: None for k in window.per_device}, [], "no idle baseline measured")
    if baseline.source != window.source:
        reason = f"baseline was measured with {baseline.source}, the window with {window.source}"
        return AdjustedEnergy(None, {k: None for k in window.per_device}, [], reason)
    d = window.duration_s
    per: dict[str, float | None] = {}
    clamped: list[str] = []
    for k, raw in window.per_device.items():
        base = baseline.per_device_w.get(k)
        per[k] = adjusted_energy_j(raw, base, d)
        if raw is not None and base is not None and raw < base * d:
            clamped.append(k)
    total = adjusted_energy_j(window.total_j, baseline.total_w, d)
    if window.total_j is not None and baseline.total_w is not None and window.total_j < baseline.total_w * d:
        clamped.append("total")
    reason = None
    if total is None:
        reason = window.unavailable_reason if window.total_j is None else baseline.unavailable_reason
        reason = reason or "energy or baseline missing"
    return AdjustedEnergy(total, per, clamped, reason)
