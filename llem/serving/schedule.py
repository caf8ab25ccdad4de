"""When each request is sent: gamma-distributed open-loop arrivals, all at once, or a replayed trace.

The arrivals use the convention of `vllm bench serve`: inter-arrival gaps drawn from a gamma
distribution of shape `burstiness` and mean 1/rate (shape 1 is a Poisson process), scaled so
that n requests arrive over exactly n/rate seconds, so the same settings mean the same load in
both tools and the throughput of a load point does not depend on the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from llem.config.serving import LoadConfig

DEFAULT_NUM_REQUESTS = 100


@dataclass(frozen=True)
class Arrival:
    """One request of the schedule: its offset from the start of its phase and its lengths."""

    index: int
    offset_s: float
    output_tokens: int
    input_tokens: int | None = None  # from a trace; None: the prompt source decides
    warmup: bool = False


def gamma_offsets(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Arrival offsets of `n` requests at `rate`/s: all 0 for an infinite rate, else cumulative gaps.

    Each request waits a gap drawn from Gamma(burstiness, 1 / (rate x burstiness)) (equal gaps of
    1/rate for an infinite burstiness), and the offsets are then scaled so the last arrival falls
    at exactly n / rate: the load's mean rate does not depend on the seed.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be positive")
    if n == 0:
        return []
    if math.isinf(rate):
        return [0.0] * n
    if math.isinf(burstiness):
        gaps = np.full(n, 1.0 / rate)
    else:
        gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    offsets = np.cumsum(gaps)
    offsets *= (n / rate) / offsets[-1]
    return offsets.tolist()


def open_loop_schedule(
    num_requests: int, warmup_requests: int, output_tokens: int, *, rate: float, burstiness: float, seed: int
) -> list[Arrival]:
    """Warm-up requests (all at offset 0) followed by the measured requests at the load's arrival times."""
    warm = [Arrival(i, 0.0, output_tokens, warmup=True) for i in range(warmup_requests)]
    offsets = gamma_offsets(num_requests, rate, burstiness, seed)
    measured = [Arrival(warmup_requests + i, t, output_tokens) for i, t in enumerate(offsets)]
    return warm + measured


def trace_schedule(records: list[dict[str, float | int]], num_requests: int | None, warmup_requests: int
                   ) -> list[Arrival]:
    """A replayed trace: its first lines warm up (sent at once), the next ones keep their offsets.

    Offsets of the measured part are shifted so its first request goes at 0: the warm-up
    ends before measuring starts, as in an open loop.
    """
    warm = records[:warmup_requests]
    rest = records[warmup_requests:]
    if num_requests is not None:
        rest = rest[:num_requests]
    if not rest:
        raise ValueError("the trace holds no request after the warm-up ones")
    t0 = float(rest[0]["offset_s"])
    out = [Arrival(i, 0.0, int(r["output_tokens"]), int(r["input_tokens"]), warmup=True) for i, r in enumerate(warm)]
    out += [
        Arrival(len(warm) + i, float(r["offset_s"]) - t0, int(r["output_tokens"]), int(r["input_tokens"]))
        for i, r in enumerate(rest)
    ]
    return out


def build_schedule(load: LoadConfig, output_tokens: int, default_seed: int) -> list[Arrival]:
    """The whole schedule of a load point: a replayed trace, or open-loop arrivals at `load.rate`."""
    if load.trace is not None:
        from llem.config.serving import read_trace

        return trace_schedule(read_trace(load.trace), load.num_requests, load.warmup_requests)
    n = load.num_requests if load.num_requests is not None else DEFAULT_NUM_REQUESTS
    seed = load.seed if load.seed is not None else default_seed
    return open_loop_schedule(n, load.warmup_requests, output_tokens, rate=load.effective_rate,
                              burstiness=load.burstiness, seed=seed)
