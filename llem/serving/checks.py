"""The checks that make a load point valid, each recorded with its value and, when it fails, the reason.

A failed check does not hide the figures: they are reported with `valid: false`, so a
reader can tell a short window from a server that never filled its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llem.serving.metrics import MetricsSamples
from llem.serving.records import RequestRecord
from llem.serving.steady import CLOSED, SteadyWindow


def _check(passed: bool | None, value: Any, required: Any, reason: str | None) -> dict[str, Any]:
    return {"passed": passed, "value": value, "required": required, "reason": None if passed else reason}


def steady_long_enough(steady: SteadyWindow, min_seconds: float) -> dict[str, Any]:
    if steady.seconds is None:
        return _check(False, None, min_seconds, steady.unavailable_reason or "no steady window")
    ok = steady.seconds >= min_seconds
    return _check(ok, steady.seconds, min_seconds,
                  f"steady window {steady.seconds:.3f} s is shorter than serving.min_steady_seconds "
                  f"({min_seconds:g} s); send more requests")


def batch_saturated(steady: SteadyWindow, metrics: MetricsSamples, fraction: float) -> dict[str, Any] | None:
    """Closed loop only: the server's mean running requests in the window reach `fraction` of B."""
    if steady.rule != CLOSED or steady.concurrency is None:
        return None
    need = fraction * steady.concurrency
    if steady.start_s is None or steady.end_s is None:
        return _check(False, None, need, steady.unavailable_reason or "no steady window")
    running = metrics.mean_between(steady.start_s, steady.end_s)
    if running is None:
        why = metrics.unavailable_reason or "no /metrics sample fell inside the steady window"
        return _check(False, None, need, f"running requests unknown: {why}")
    return _check(running >= need, running, need,
                  f"the server ran {running:.2f} requests at once on average, under {fraction:.0%} of the "
                  f"concurrency {steady.concurrency}: the batch was never full")


def all_answered(records: Sequence[RequestRecord]) -> dict[str, Any]:
    measured = [r for r in records if not r.warmup]
    failed = [r for r in measured if not r.ok]
    reason = None
    if failed:
        first = failed[0]
        reason = f"{len(failed)} of {len(measured)} requests failed (request {first.index}: {first.error})"
    return _check(not failed, len(measured) - len(failed), len(measured), reason)


def token_counts_agree(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """The server's `usage` and the client's own count agree for every answered request that reported usage."""
    done = [r for r in records if r.ok and not r.warmup]
    reported = [r for r in done if r.server_output_tokens is not None]
    if not reported:
        return _check(None, 0, len(done), "the server reported no token usage to compare with")
    bad = [r for r in reported if r.server_output_tokens != r.output_tokens]
    reason = None
    if bad:
        r = bad[0]
        reason = (f"{len(bad)} requests differ (request {r.index}: server {r.server_output_tokens}, client "
                  f"{r.output_tokens})")
    elif len(reported) < len(done):
        reason = f"{len(done) - len(reported)} answered requests carried no usage"
        return _check(None, len(reported), len(done), reason)
    return _check(not bad, len(reported) - len(bad), len(reported), reason)


def run_checks(records: Sequence[RequestRecord], steady: SteadyWindow, metrics: MetricsSamples, *,
               min_steady_seconds: float, saturation_fraction: float) -> dict[str, Any]:
    """Every check by name, and `valid`: true only when each one passed."""
    checks: dict[str, Any] = {
        "steady_window": steady_long_enough(steady, min_steady_seconds),
        "all_answered": all_answered(records),
        "token_counts": token_counts_agree(records),
    }
    saturated = batch_saturated(steady, metrics, saturation_fraction)
    if saturated is not None:
        checks["batch_saturation"] = saturated
    failed = [name for name, c in checks.items() if c["passed"] is not True]
    return {"valid": not failed, "failed": failed, "checks": checks}
