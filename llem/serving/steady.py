"""The steady window of a load point, by ML.ENERGY's rule, found live and recomputed from the records.

Closed loop with concurrency B: the window opens when B measured requests have had their first
token (the batch is full) and closes when N - B have finished (from then on fewer than B are
left, and the batch drains). Open loop: it opens when the warm-up requests are done and closes
at the last arrival (after it, no new work comes in). Energy is attributed over this window
only, so ramp-up and tail are left out.

The same rule runs twice on the same timestamps: live (`SteadyTracker`, which tells the
energy monitor when to open and close its window) and afterwards from the records
(`steady_window`), so the energy window and the token count agree by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from llem.serving.records import RequestRecord

CLOSED, OPEN = "closed", "open"
STEADY, RUN = "steady", "run"


@dataclass(frozen=True)
class SteadyRule:
    """Which rule applies: `closed` with concurrency B, or `open`; N is the number of measured requests."""

    kind: str
    num_requests: int
    concurrency: int | None = None

    def problem(self) -> str | None:
        """Why no steady window can exist under this rule, before anything runs (None: it can)."""
        if self.kind != CLOSED:
            return None
        if self.concurrency is None:
            return ("closed loop without a known concurrency: set load.max_concurrency (or the server's batch "
                    "size) to define the steady window")
        if self.num_requests - self.concurrency < 1:
            return (f"closed loop with {self.num_requests} requests and concurrency {self.concurrency}: the batch "
                    "never stays full; send more than twice the concurrency")
        return None


def steady_rule(*, rate: float, max_concurrency: int | None, trace: bool, num_requests: int,
                server_batch: int | None) -> SteadyRule:
    """Closed loop when concurrency paces the load (a cap with no finite rate, or all at once, where the
    server's batch size B is the concurrency, as in ML.ENERGY's runs); open loop otherwise."""
    if not trace and math.isinf(rate):
        return SteadyRule(CLOSED, num_requests, max_concurrency if max_concurrency is not None else server_batch)
    return SteadyRule(OPEN, num_requests)


class WindowHooks(Protocol):
    """Told the moment a window opens or closes (`name` is "run" or "steady"; `t` on the client's clock)."""

    def window_started(self, name: str, t: float) -> None: ...

    def window_ended(self, name: str, t: float) -> None: ...


class SteadyTracker:
    """Applies the rule while the load runs and calls `hooks` at the instants the window opens and closes."""

    def __init__(self, rule: SteadyRule, hooks: WindowHooks | None = None) -> None:
        self.rule = rule
        self.hooks = hooks
        self.start_s: float | None = None
        self.end_s: float | None = None
        self._first_tokens = 0
        self._finished = 0
        self._sent = 0
        self._broken = rule.problem() is not None

    def _open(self, t: float) -> None:
        if self.start_s is None and not self._broken:
            self.start_s = t
            if self.hooks is not None:
                self.hooks.window_started(STEADY, t)

    def _close(self, t: float) -> None:
        if self.start_s is None:  # the end of the rule came before its start: no steady state was reached
            self._broken = True
            return
        if self.end_s is None:
            self.end_s = t
            if self.hooks is not None:
                self.hooks.window_ended(STEADY, t)

    def measured_started(self, t: float) -> None:
        if self.rule.kind == OPEN:
            self._open(t)

    def sent(self, t: float) -> None:
        self._sent += 1
        if self.rule.kind == OPEN and self._sent == self.rule.num_requests:
            self._close(t)

    def first_token(self, t: float) -> None:
        self._first_tokens += 1
        if self.rule.kind == CLOSED and self._first_tokens == self.rule.concurrency:
            self._open(t)

    def finished(self, t: float) -> None:
        self._finished += 1
        b = self.rule.concurrency
        if self.rule.kind == CLOSED and b is not None and self._finished == self.rule.num_requests - b:
            self._close(t)

    def abandon(self) -> None:
        """The run ended without the window closing: close it at no time so the monitor releases it."""
        if self.start_s is not None and self.end_s is None and self.hooks is not None:
            self._broken = True
            self.hooks.window_ended(STEADY, math.nan)


@dataclass
class SteadyWindow:
    """The steady window: its bounds on the client clock, and the requests and tokens inside it."""

    rule: str
    concurrency: int | None
    start_s: float | None
    end_s: float | None
    seconds: float | None
    requests: int | None  # measured requests that finished inside the window
    output_tokens: int | None  # tokens whose chunk arrived inside the window
    unavailable_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokens_between(records: Sequence[RequestRecord], start: float, end: float) -> int:
    """Output tokens whose chunks arrived in [start, end], over the given requests."""
    total = 0
    for r in records:
        for t, n in zip(r.chunk_times, r.chunk_tokens):
            if start <= t <= end:
                total += n
    return total


def steady_window(records: Sequence[RequestRecord], rule: SteadyRule, measured_start_s: float) -> SteadyWindow:
    """The window the rule gives on these records (warm-up requests are ignored)."""
    measured = [r for r in records if not r.warmup]

    def none(reason: str) -> SteadyWindow:
        return SteadyWindow(rule.kind, rule.concurrency, None, None, None, None, None, reason)

    problem = rule.problem()
    if problem:
        return none(problem)
    if rule.kind == CLOSED:
        b = rule.concurrency
        assert b is not None
        firsts = sorted(r.first_token_s for r in measured if r.first_token_s is not None)
        ends = sorted(r.end_s for r in measured if r.end_s is not None)
        if len(firsts) < b:
            return none(f"only {len(firsts)} requests got a first token, fewer than the concurrency {b}")
        if len(ends) < rule.num_requests - b:
            return none(f"only {len(ends)} of {rule.num_requests} requests finished")
        start, end = firsts[b - 1], ends[rule.num_requests - b - 1]
        if end <= start:
            return none(f"{rule.num_requests - b} requests had finished before {b} had a first token: the "
                        f"server never held {b} requests at once")
    else:
        sends = [r.send_s for r in measured if r.send_s is not None]
        if not sends:
            return none("no measured request was sent")
        start, end = measured_start_s, max(sends)
        if end <= start:
            return none("every request arrived at once: an open loop with an infinite rate has no steady "
                        "window; set load.max_concurrency or a finite load.rate")
    inside = sum(1 for r in measured if r.end_s is not None and start <= r.end_s <= end)
    return SteadyWindow(rule.kind, rule.concurrency, start, end, end - start, inside,
                        tokens_between(measured, start, end))
