"""Latency from per-token timestamps (no estimation from separate runs), one clock for every engine.

In offline mode every prompt arrives at the start of its pass of the window, so
TTFT and end-to-end include any time spent waiting for a batch slot; `queue_ms`
and `prefill_ms` split TTFT into that wait and the engine's own work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llem.backends.base import SequenceTiming
from llem.measure.result import Distribution


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def distribution(values_ms: Sequence[float]) -> Distribution:
    """Mean and percentiles; an empty input is 'not measured' (all null), never zeros."""
    if not values_ms:
        return Distribution(count=0, mean=None, p50=None, p95=None, p99=None)
    ordered = sorted(values_ms)
    return Distribution(
        count=len(ordered),
        mean=sum(ordered) / len(ordered),
        p50=_percentile(ordered, 50),
        p95=_percentile(ordered, 95),
        p99=_percentile(ordered, 99),
    )


def ttft_ms(sequences: Sequence[SequenceTiming]) -> list[float]:
    """First token on the host minus the prompt's arrival (the start of the window's pass)."""
    return [(s.token_times_s[0] - s.arrival_s) * 1000.0 for s in sequences if s.token_times_s]


def itl_ms(sequences: Sequence[SequenceTiming]) -> list[float]:
    """Gaps between consecutive tokens of the same sequence."""
    gaps: list[float] = []
    for s in sequences:
        times = s.token_times_s
        gaps.extend((b - a) * 1000.0 for a, b in zip(times, times[1:]))
    return gaps


def e2e_ms(sequences: Sequence[SequenceTiming]) -> list[float]:
    """Last token on the host minus the prompt's arrival."""
    return [(s.token_times_s[-1] - s.arrival_s) * 1000.0 for s in sequences if s.token_times_s]


def queue_ms(sequences: Sequence[SequenceTiming]) -> list[float]:
    """Time a prompt waited before the engine took it up (scheduled minus arrival)."""
    return [(s.scheduled_s - s.arrival_s) * 1000.0 for s in sequences if s.scheduled_s is not None]


def prefill_ms(sequences: Sequence[SequenceTiming]) -> list[float]:
    """The engine's own time to the first token (first token minus scheduled)."""
    return [
        (s.token_times_s[0] - s.scheduled_s) * 1000.0
        for s in sequences
        if s.scheduled_s is not None and s.token_times_s
    ]


def scheduled_unavailable(sequences: Sequence[SequenceTiming]) -> str | None:
    """Why queue and prefill times are missing (None when every sequence has a scheduled time)."""
    missing = [s for s in sequences if s.scheduled_s is None]
    if not missing:
        return None
    reasons = sorted({s.scheduled_unavailable_reason or "the engine did not report when it scheduled the request"
                      for s in missing})
    return f"{len(missing)} of {len(sequences)} prompts have no scheduled time: " + "; ".join(reasons)
