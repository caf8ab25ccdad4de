"""Short, specific warnings about how far a window's energy figure can be trusted."""

from __future__ import annotations

from llem.energy.meters.base import EnergyWindow

# A window should span at least this many meter update periods.
MIN_RESOLUTION_MULTIPLE = 10


def counter_polled_diff_pct(counter_j: float, polled_j: float) -> float | None:
    """Disagreement relative to the counter; None when the counter read 0."""
    if counter_j <= 0:
        return None
    return abs(counter_j - polled_j) / counter_j * 100.0


def quality_warnings(
    window: EnergyWindow,
    *,
    polled_total_j: float | None = None,
    tolerance_pct: float = 10.0,
    samples: int | None = None,
    throttled: bool = False,
    persistence_mode: dict[str, bool | None] | None = None,
    min_samples: int = 10,
) -> list[str]:
    """Warnings for one measured window.

    `samples` is the number of telemetry samples taken over it (None: not
    sampled); `polled_total_j` defaults to the window's own cross-check figure.
    """
    out: list[str] = []
    res = window.resolution_s
    if res and window.duration_s < MIN_RESOLUTION_MULTIPLE * res:
        out.append(
            f"window of {window.duration_s:.3f} s is shorter than {MIN_RESOLUTION_MULTIPLE}x the {window.source} "
            f"meter's update period ({res:.3f} s); measure more prompts for a reliable figure"
        )
    if samples is not None and samples < min_samples:
        out.append(f"only {samples} telemetry samples in the window (fewer than {min_samples}); lengthen the window or "
                   "shorten energy.sample_interval_ms")
    polled = polled_total_j if polled_total_j is not None else window.polled_total_j
    if polled is not None and window.total_j is not None:
        diff = counter_polled_diff_pct(window.total_j, polled)
        if diff is not None and diff > tolerance_pct:
            out.append(
                f"energy counter ({window.total_j:.1f} J) and integrated power ({polled:.1f} J) differ by "
                f"{diff:.1f}% (tolerance {tolerance_pct:g}%)"
            )
    if throttled:
        out.append("thermal throttling was seen during the window; clocks and energy reflect a hot device")
    for dev, on in (persistence_mode or {}).items():
        if on is False:
            out.append(f"persistence mode is off on {dev}; the driver may re-initialise between runs "
                       "(enable it with `nvidia-smi -pm 1`)")
    return out
