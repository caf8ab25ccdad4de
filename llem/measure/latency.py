"""Latency and throughput from per-token timestamps (no estimation from separate runs)."""

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
    """Time from the start of each prompt's batch to its first token on the host."""
    return [(s.token_times_s[0] - s.batch_start_s) * 1000.0 for s in sequences if s.token_times_s]


def itl_ms(sequences: Sequence[SequenceTiming]) -> list[float]:
    """Gaps between consecutive tokens of the same sequence."""
    gaps: list[float] = []
    for s in sequences:
        times = s.token_times_s
        gaps.extend((b - a) * 1000.0 for a, b in zip(times, times[1:]))
    return gaps


def e2e_ms(sequences: Sequence[SequenceTiming]) -> list[float]:
    """Time from the start of each prompt's batch to its last token."""
    return [(s.token_times_s[-1] - s.batch_start_s) * 1000.0 for s in sequences if s.token_times_s]
