"""Latency, throughput and goodput of a load point, named and defined as `vllm bench serve` defines them.

All latencies are measured at the client from the request's send time (docs/serving.md):
TTFT = first chunk - send; E2E = last chunk - send; TPOT = (E2E - TTFT) / (output tokens - 1)
per request; ITL = every gap between consecutive chunks, pooled over requests. Output
tokens are the server's count (`usage`) where it reports one, else the client's. Only
measured requests that were answered count; errors are counted beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llem.config.serving import SloConfig
from llem.serving.records import RequestRecord

PERCENTILES = (50, 90, 99)


def stats_ms(values_s: Sequence[float]) -> dict[str, float | None]:
    """mean, p50, p90, p99 in milliseconds (numpy's linear percentiles, as vLLM's client uses); null if empty."""
    if not values_s:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    arr = np.asarray(values_s, dtype=float) * 1000.0
    out: dict[str, float | None] = {"mean": float(arr.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(arr, p))
    return out


def output_tokens(record: RequestRecord) -> int:
    """The server's count where it reported one, else the client's."""
    return record.server_output_tokens if record.server_output_tokens is not None else record.output_tokens


def tpot_s(record: RequestRecord) -> float | None:
    ttft, e2e, n = record.ttft_s, record.e2e_s, output_tokens(record)
    if ttft is None or e2e is None or n < 2:
        return None
    return (e2e - ttft) / (n - 1)


def is_good(record: RequestRecord, slo: SloConfig | None) -> bool:
    """Answered, and within every latency target that is set."""
    if not record.ok:
        return False
    if slo is None:
        return True
    ttft, e2e, tpot = record.ttft_s, record.e2e_s, tpot_s(record)
    if slo.ttft_ms is not None and (ttft is None or ttft * 1000.0 > slo.ttft_ms):
        return False
    if slo.e2e_ms is not None and (e2e is None or e2e * 1000.0 > slo.e2e_ms):
        return False
    if slo.tpot_ms is not None and tpot is not None and tpot * 1000.0 > slo.tpot_ms:
        return False
    return True


def latency_figures(records: Sequence[RequestRecord]) -> dict[str, dict[str, float | None]]:
    done = [r for r in records if r.ok and not r.warmup]
    ttft = [r.ttft_s for r in done if r.ttft_s is not None]
    e2e = [r.e2e_s for r in done if r.e2e_s is not None]
    tpot = [t for t in (tpot_s(r) for r in done) if t is not None]
    itl = [gap for r in done for gap in r.itl_s]
    return {"ttft_ms": stats_ms(ttft), "tpot_ms": stats_ms(tpot), "itl_ms": stats_ms(itl), "e2e_ms": stats_ms(e2e)}


def throughput_figures(records: Sequence[RequestRecord], duration_s: float, slo: SloConfig | None
                       ) -> dict[str, Any]:
    """Completed requests, output tokens and good requests per second of the measured phase."""
    measured = [r for r in records if not r.warmup]
    done = [r for r in measured if r.ok]
    good = [r for r in done if is_good(r, slo)]
    tokens = sum(output_tokens(r) for r in done)
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: None)
    return {
        "duration_s": duration_s,
        "requests": len(measured),
        "completed": len(done),
        "errors": len(measured) - len(done),
        "good_requests": len(good),
        "output_tokens": tokens,
        "mean_output_tokens": tokens / len(done) if done else None,
        "requests_per_s": per_s(len(done)),
        "output_tokens_per_s": per_s(tokens),
        "goodput_rps": per_s(len(good)),
    }
