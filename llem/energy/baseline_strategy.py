"""When an idle baseline is measured again and when one already measured is reused.

Measuring idle power takes `baseline.duration_seconds` (plus the settle time) before every job;
over a long campaign that is hours of idle GPUs. Idle power changes slowly, but it does change
(a warmer room, a fan curve, another tenant's job on a shared node), so a baseline reused blindly
goes stale. Three strategies:

- `fresh`: measured before every job;
- `cached`: reused for the same device set and model state while younger than `cache_ttl_seconds`;
- `validated`: cached, but every `validation_interval` jobs a short measurement
  (`validation_duration_seconds`) re-checks it, and a drift above `drift_threshold` measures a
  new baseline at full length.

A baseline belongs to its sources and devices (the monitor's key), the model state it was
measured in (none loaded, or loaded and idle) and the meter that read it. The cache lives in the
worker process for as long as the worker does.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llem.energy.baseline import BaselineResult


class BaselineSettings(Protocol):
    strategy: str
    cache_ttl_seconds: float
    validation_interval: int
    drift_threshold: float


@dataclass
class CachedBaseline:
    baseline: BaselineResult
    measured_at: float  # on the cache's clock
    state: str  # the model state it was measured in
    meter: Any = None  # weak reference to the meter that read it (None: the process's own)
    jobs_since_check: int = 0
    last_drift: float | None = None

    def read_by(self, meter: Any) -> bool:
        return (self.meter() if self.meter is not None else None) is meter


class BaselineCache:
    """The latest baseline of one worker per baseline key (sources and devices)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.entries: dict[str, CachedBaseline] = {}

    def put(self, key: str, state: str, baseline: BaselineResult, meter: Any) -> CachedBaseline:
        ref = None if meter is None else weakref.ref(meter)
        entry = CachedBaseline(baseline, self.clock(), state, ref)
        self.entries[key] = entry
        return entry


_CACHES: weakref.WeakKeyDictionary[Any, BaselineCache] = weakref.WeakKeyDictionary()


def cache_for(owner: Any) -> BaselineCache:
    """The cache of a worker's session (created on first use, gone with the session)."""
    cache = _CACHES.get(owner)
    if cache is None:
        cache = _CACHES[owner] = BaselineCache()
    return cache


def drift(reference: BaselineResult, check: BaselineResult) -> float | None:
    """Relative change of total idle power; None when either total is unknown."""
    if reference.total_w is None or check.total_w is None or reference.total_w <= 0:
        return None
    return abs(check.total_w - reference.total_w) / reference.total_w


def acquire(
    settings: BaselineSettings,
    cache: BaselineCache,
    key: str,
    *,
    state: str,
    fits: tuple[str, ...] | None = None,
    measure: Callable[[], BaselineResult | None],
    check: Callable[[], BaselineResult | None],
    meter: Any = None,
) -> tuple[BaselineResult | None, dict[str, Any]]:
    """The baseline for this job under `settings.strategy`, and what result.json records about it.

    `state` is the model state a new measurement is taken in; `fits` the states whose baselines this job may
    reuse (default: `state` alone). `measure` takes a full baseline, `check` a short one; either may give None.
    """
    strategy = settings.strategy
    entry = cache.entries.get(key)
    now = cache.clock()
    usable = (
        strategy != "fresh" and entry is not None and entry.read_by(meter)
        and entry.state in (fits or (state,))
        and now - entry.measured_at <= settings.cache_ttl_seconds
    )
    info: dict[str, Any] = {"strategy": strategy, "validated": False, "last_drift": None}
    if usable and entry is not None:
        info["last_drift"] = entry.last_drift
        if strategy == "validated":
            entry.jobs_since_check += 1
            if entry.jobs_since_check >= settings.validation_interval:
                checked = check()
                entry.jobs_since_check = 0
                info["validated"] = True
                seen = None if checked is None else drift(entry.baseline, checked)
                entry.last_drift = info["last_drift"] = seen
                if seen is None or seen > settings.drift_threshold:
                    info["remeasured"] = "drift" if seen is not None else "check unreadable"
                    return _fresh(cache, key, state, measure, meter, info, last_drift=seen)
        return entry.baseline, {**info, "reused": True, "age_s": now - entry.measured_at}
    if strategy == "fresh":
        reason = "fresh strategy"
    elif entry is None:
        reason = "none cached"
    elif now - entry.measured_at > settings.cache_ttl_seconds:
        reason = "expired"
    else:
        reason = "cached one taken in another model state"
    return _fresh(cache, key, state, measure, meter, {**info, "remeasured": reason}, last_drift=info["last_drift"])


def _fresh(cache: BaselineCache, key: str, state: str, measure: Callable[[], BaselineResult | None], meter: Any,
           info: dict[str, Any], last_drift: float | None) -> tuple[BaselineResult | None, dict[str, Any]]:
    baseline = measure()
    if baseline is None or baseline.total_w is None:
        cache.entries.pop(key, None)  # nothing to reuse
    else:
        cache.put(key, state, baseline, meter).last_drift = last_drift
    return baseline, {**info, "reused": False, "age_s": 0.0}
