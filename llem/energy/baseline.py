"""Idle-power baseline and the arithmetic that subtracts it.

Idle draw is a sizeable share of small-batch energy and is paid whether or not
the model runs, so llem reports both raw energy and energy above idle. A
baseline is only valid for windows over the same sources and devices: it
carries the monitor's `baseline_key`, and a window with another key gets no
adjusted figure at all rather than a partial one. An adjusted figure below
zero means the baseline was not idle power for this window; it is left null
with a warning rather than clamped to 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llem.energy.monitor import EnergyMonitor, MonitorWindow


@dataclass
class BaselineResult:
    """Idle power per component and device, and the conditions it was measured under."""

    key: str  # the monitor's baseline_key: sources and device set
    source: str
    duration_s: float
    settle_s: float
    total_w: float | None
    component_w: dict[str, float | None]
    per_device_w: dict[str, float | None]
    device_state: dict[str, Any] = field(default_factory=dict)  # per GPU, as measuring began
    unavailable_reason: str | None = None

    def to_info(self) -> dict[str, Any]:
        """Everything about how the baseline was taken, for the result file."""
        return asdict(self)

    to_dict = to_info


def measure_baseline(
    monitor: EnergyMonitor,
    duration_s: float,
    *,
    settle_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    window_name: str = "baseline",
) -> BaselineResult:
    """Wait `settle_s` (devices returning to idle after a released model), then average power over `duration_s`."""
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    if settle_s < 0:
        raise ValueError("settle_s must not be negative")
    if settle_s > 0:
        sleep(settle_s)
    state = monitor.device_state()
    monitor.begin_window(window_name)
    try:
        sleep(duration_s)
    finally:
        window = monitor.end_window(window_name)
    return baseline_from_window(
        window, monitor.baseline_key, source=monitor.source, settle_s=settle_s, device_state=state
    )


def baseline_from_window(
    window: MonitorWindow,
    key: str,
    *,
    source: str = "",
    settle_s: float = 0.0,
    device_state: dict[str, Any] | None = None,
) -> BaselineResult:
    """Idle power = energy / duration, per component (over its own meter's duration) and per device."""
    per_component: dict[str, float | None] = {}
    per_device: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for name, comp in window.components.items():
        d = comp.duration_s if comp.duration_s is not None else window.duration_s
        if d <= 0:
            per_component[name] = None
            reasons[name] = "baseline window has no duration"
        elif comp.joules is None:
            per_component[name] = None
            reasons[name] = comp.unavailable_reason or "not measured"
        else:
            per_component[name] = comp.joules / d
        for dev, joules in comp.per_device.items():
            per_device[dev] = None if joules is None or d <= 0 else joules / d
    total: float | None = None
    reason: str | None = None
    if not per_component:
        reason = window.unavailable_reason or "nothing measured"
    elif reasons:
        reason = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    else:
        total = float(sum(w for w in per_component.values() if w is not None))
    return BaselineResult(
        key=key,
        source=source,
        duration_s=window.duration_s,
        settle_s=settle_s,
        total_w=total,
        component_w=per_component,
        per_device_w=per_device,
        device_state=dict(device_state or {}),
        unavailable_reason=reason,
    )


# Relative difference below which raw and idle energy count as equal (floating-point rounding, not measurement).
_ROUNDING = 1e-9


def adjusted_energy_j(raw_j: float | None, baseline_w: float | None, duration_s: float) -> float | None:
    """Energy above idle; None when either input is missing or the raw energy is below idle (never 0 for that)."""
    if raw_j is None or baseline_w is None:
        return None
    idle = baseline_w * duration_s
    above = raw_j - idle
    if above >= 0:
        return above
    return 0.0 if -above <= _ROUNDING * max(abs(raw_j), abs(idle)) else None  # equal but for float rounding


def energy_per_token_j(adjusted_j: float | None, output_tokens: int | None) -> float | None:
    if adjusted_j is None or output_tokens is None or output_tokens <= 0:
        return None
    return adjusted_j / output_tokens


@dataclass
class AdjustedEnergy:
    """A window's energy with the idle baseline removed, per component, per device and in total."""

    total_j: float | None
    components_j: dict[str, float | None]
    per_device_j: dict[str, float | None]
    clamped: list[str] = field(default_factory=list)  # components and devices whose raw energy was below idle
    warnings: list[str] = field(default_factory=list)
    unavailable_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _below_idle(what: str, raw: float, base_w: float, d: float) -> str:
    return (
        f"{what}: energy in the window ({raw:.2f} J) is below the idle baseline ({base_w:.2f} W x {d:.3f} s = "
        f"{base_w * d:.2f} J), so its energy above idle is left null; the baseline was not measured at idle "
        "or the window is too short"
    )


def adjust_window(window: MonitorWindow, baseline: BaselineResult | None, monitor_key: str) -> AdjustedEnergy:
    """Subtract idle power x duration from every component and device of `window`.

    `monitor_key` is the key of the monitor that measured `window`; a baseline
    with another key (other sources, other GPUs, other RAPL domains) adjusts
    nothing. The total is the sum of the adjusted components, or None when any
    of them is None: never a partial sum.
    """
    comps = window.components
    none_c: dict[str, float | None] = dict.fromkeys(comps)
    none_d: dict[str, float | None] = {dev: None for c in comps.values() for dev in c.per_device}
    if baseline is None:
        return AdjustedEnergy(None, none_c, none_d, unavailable_reason="no idle baseline measured")
    if baseline.key != monitor_key:
        reason = (
            f"the idle baseline was measured over other sources or devices ({baseline.key}) than this window "
            f"({monitor_key}); it must be re-measured for this device set"
        )
        return AdjustedEnergy(None, none_c, none_d, unavailable_reason=reason)
    if not comps:
        return AdjustedEnergy(None, {}, {}, unavailable_reason=window.unavailable_reason or "nothing measured")
    per_component: dict[str, float | None] = {}
    per_device: dict[str, float | None] = {}
    clamped: list[str] = []
    warnings: list[str] = []
    reasons: dict[str, str] = {}
    for name, comp in comps.items():
        d = comp.duration_s if comp.duration_s is not None else window.duration_s
        base = baseline.component_w.get(name)
        per_component[name] = adjusted_energy_j(comp.joules, base, d)
        if comp.joules is None:
            reasons[name] = comp.unavailable_reason or "not measured"
        elif base is None:
            reasons[name] = f"no idle baseline ({baseline.unavailable_reason or 'not measured'})"
        elif per_component[name] is None:
            clamped.append(name)
            warnings.append(_below_idle(name, comp.joules, base, d))
            reasons[name] = "below the idle baseline"
        for dev, raw in comp.per_device.items():
            dev_base = baseline.per_device_w.get(dev)
            per_device[dev] = adjusted_energy_j(raw, dev_base, d)
            if raw is not None and dev_base is not None and per_device[dev] is None:
                clamped.append(dev)
                warnings.append(_below_idle(dev, raw, dev_base, d))
    if reasons:
        detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        return AdjustedEnergy(None, per_component, per_device, clamped, warnings, detail)
    total = float(sum(v for v in per_component.values() if v is not None))
    return AdjustedEnergy(total, per_component, per_device, clamped, warnings)
