"""How far a window's energy figure can be trusted: short, specific warnings, and the failures that void it.

A failure is a figure the job needs but could not get: a job that runs on a GPU whose
energy cannot be read has no energy figure at all (a host-only total would pass for the
job's), so its quality is `fail`, with the reason, rather than a warning beside a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llem.energy.monitor import MonitorWindow

# A window's edges each carry up to one update period of error, so it should span
# at least this many periods for the figure to be good to about 1-2 %.
MIN_UPDATE_PERIODS = 100

_POLLED = {
    "instant": "integrated instant power (NVML_FI_DEV_POWER_INSTANT)",
    "average": "integrated averaged power (nvmlDeviceGetPowerUsage, a ~1 s trailing average that lags changes)",
    "mixed": "integrated power (instant on some GPUs, a ~1 s trailing average on others)",
}


def counter_polled_diff_pct(counter_j: float, polled_j: float) -> float | None:
    """Disagreement relative to the counter; None when the counter read 0."""
    if counter_j <= 0:
        return None
    return abs(counter_j - polled_j) / counter_j * 100.0


def _short_window(window: MonitorWindow, update_periods_s: Mapping[str, float | None]) -> str | None:
    d = window.duration_s
    measured = {k: v for k, v in update_periods_s.items() if v}
    if measured:
        device, period = max(measured.items(), key=lambda kv: kv[1])
        if d < MIN_UPDATE_PERIODS * period:
            return (
                f"window of {d:.3f} s is shorter than {MIN_UPDATE_PERIODS} update periods of the GPU energy counter "
                f"(period measured at {period * 1000:.1f} ms on {device}; at least {MIN_UPDATE_PERIODS * period:.1f} s "
                "needed); measure more prompts or a longer window for a reliable figure"
            )
        return None
    res = window.resolution_s
    if res and d < MIN_UPDATE_PERIODS * res:
        return (
            f"window of {d:.3f} s is shorter than {MIN_UPDATE_PERIODS} update periods of its slowest energy source "
            f"({res * 1000:.1f} ms, not measured; at least {MIN_UPDATE_PERIODS * res:.1f} s needed); measure more "
            "prompts or a longer window for a reliable figure"
        )
    return None


def quality_warnings(
    window: MonitorWindow,
    *,
    update_periods_s: Mapping[str, float | None] | None = None,
    tolerance_pct: float = 10.0,
    samples: int | None = None,
    throttled: bool = False,
    persistence_mode: Mapping[str, bool | None] | None = None,
    min_samples: int = 10,
) -> list[str]:
    """Warnings for one measured window.

    `update_periods_s` are the GPU counter's update periods measured when the
    monitor opened (`EnergyMonitor.update_periods_s`); without them the
    window's own resolution is used. `samples` is the number of telemetry
    samples taken over it (None: not sampled).
    """
    out: list[str] = []
    short = _short_window(window, update_periods_s or {})
    if short:
        out.append(short)
    if samples is not None and samples < min_samples:
        out.append(f"only {samples} telemetry samples in the window (fewer than {min_samples}); lengthen the window or "
                   "shorten energy.sample_interval_ms")
    gpu = window.components.get("gpu")
    if gpu is not None and gpu.joules is not None and gpu.polled_j is not None:
        diff = counter_polled_diff_pct(gpu.joules, gpu.polled_j)
        if diff is not None and diff > tolerance_pct:
            polled = _POLLED.get(gpu.polled_source or "", "integrated power")
            out.append(
                f"GPU energy counter ({gpu.joules:.1f} J) and {polled} ({gpu.polled_j:.1f} J) differ by "
                f"{diff:.1f}% (tolerance {tolerance_pct:g}%)"
            )
    if throttled:
        out.append("thermal throttling was seen during the window; clocks and energy reflect a hot device")
    for dev, on in (persistence_mode or {}).items():
        if on is False:
            out.append(f"persistence mode is off on {dev}; the driver may re-initialise between runs "
                       "(enable it with `nvidia-smi -pm 1`)")
    return out


QUALITY_OK, QUALITY_WARN, QUALITY_FAIL = "ok", "warn", "fail"


def quality_failures(window: MonitorWindow) -> list[str]:
    """Why `window` gives the job no usable energy figure: GPUs in its scope whose energy could not be read."""
    gpu = window.components.get("gpu")
    if gpu is None or gpu.joules is not None:
        return []
    unread = [d for d, j in gpu.per_device.items() if j is None] or list(gpu.devices)
    devices = ", ".join(unread) or "the job's GPU"
    return [
        f"GPU energy could not be read on {devices} ({gpu.unavailable_reason or 'not measured'}); the job runs on "
        "its GPUs, so its energy is null rather than a total of what could be read"
    ]


def quality_status(failures: list[str], warnings: list[str]) -> str:
    """`fail` with any failure, `warn` with only warnings, else `ok`."""
    if failures:
        return QUALITY_FAIL
    return QUALITY_WARN if warnings else QUALITY_OK
