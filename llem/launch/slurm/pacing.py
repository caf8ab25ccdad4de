"""The campaign's pacing, kept inside a SLURM group: gaps, the per-job time limit and health checks.

A group runs its jobs in one process on the node, with no worker to kill or restart, so each setting
has an in-process counterpart: a gap is slept between two jobs (the cycle gap when the job's cycle
changes), a job that passes `experiment_timeout_seconds` is interrupted by SIGALRM and fails (its model
is released, so the next job starts clean), and an unhealthy check releases the loaded model, which
is what restarting a worker would have freed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Period = tuple[int | None, int | None]  # (repetition, cycle)


class JobTimedOut(BaseException):
    """A job ran past its time limit. A BaseException, so a task's own `except Exception` cannot swallow it."""


@dataclass
class HealthPolicy:
    """`campaign.health_check`, as a group applies it."""

    interval_experiments: int = 0
    gpu_memory_threshold_pct: float = 90.0
    restart_on_failure: bool = True
    max_restarts: int = 3


@dataclass
class GroupPacing:
    """What paces one group's jobs (the running campaign's settings)."""

    config_gap_s: float = 0.0
    cycle_gap_s: float = 0.0
    timeout_s: float | None = None
    health: HealthPolicy | None = None  # None: health checks are off


@contextmanager
def time_limit(seconds: float | None) -> Iterator[bool]:
    """Raise JobTimedOut in this (the main) thread after `seconds`. Yields whether a limit is armed: signals
    reach only the main thread, and a group always runs there (submitit's process, or the container's)."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield False
        return

    def _expired(signum: int, frame: Any) -> None:
        raise JobTimedOut(seconds)

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class GroupHealth:
    """Health checks of one group: when they are due, what they found, and the group's restart budget."""

    policy: HealthPolicy
    probe: Callable[[], dict[str, Any]]
    release: Callable[[], None]
    since_check: int = 0
    last_period: Period | None = None
    restarts: int = 0
    disabled_reason: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def due(self, period: Period) -> bool:
        if self.policy.interval_experiments > 0:
            return self.since_check >= self.policy.interval_experiments
        return self.last_period != period

    def check(self, key: str, job_num: int, period: Period) -> None:
        """Probe GPU memory; on a problem release the model (the group's 'restart') or, past the budget, disable
        the group's remaining jobs."""
        threshold = self.policy.gpu_memory_threshold_pct
        try:
            reply = self.probe()
            devices = reply.get("devices", {})
            over = {d: i["used_pct"] for d, i in devices.items()
                    if i.get("used_pct") is not None and i["used_pct"] > threshold}
            problem = ", ".join(f"{d} at {p:.1f}% memory > {threshold:g}%" for d, p in over.items()) or None
            self.events.append({"kind": "health_check", "key": key, "job_num": job_num, "healthy": problem is None,
                                "devices": {d: i.get("used_pct") for d, i in devices.items()},
                                "note": reply.get("unavailable_reason")})
        except Exception as error:  # noqa: BLE001 - the device layer could not answer
            problem = f"no answer to the health check ({error})"
            self.events.append({"kind": "health_check", "key": key, "job_num": job_num, "healthy": False,
                                "reason": problem})
        self.since_check = 0
        self.last_period = period
        if problem is None:
            return
        if not self.policy.restart_on_failure or self.restarts >= self.policy.max_restarts:
            why = ("restarts are disabled" if not self.policy.restart_on_failure
                   else f"max_restarts ({self.policy.max_restarts}) reached")
            self.disabled_reason = f"group '{key}' is unhealthy ({problem}) and {why}"
            self.events.append({"kind": "worker_disabled", "key": key, "reason": self.disabled_reason})
            return
        self.restarts += 1
        self.release()
        self.events.append({"kind": "worker_restart", "key": key, "reason": problem, "restarts": self.restarts,
                            "how": "model released in the SLURM job"})

    def take_events(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events
