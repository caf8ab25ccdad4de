"""Guards that stop a campaign before it wastes its time: a circuit breaker and a wall-clock limit.

A broken driver or a full disk makes every job fail in seconds, and would burn through a week's
campaign in minutes. After `max_consecutive_failures` failures in a row the breaker opens: the next
job waits `circuit_breaker_cooldown_seconds` and then runs alone as a probe. A success closes the
breaker; a failure stops the campaign, leaving the remaining jobs pending for a resume.

`wall_clock_timeout_hours` stops the campaign when this run has lasted that long.

Both stop the campaign the way Ctrl-C does (the engine's interrupt path records the state and tells
the webhook), so a stop never differs from an interrupt in what it leaves behind.
"""

from __future__ import annotations

import _thread
import ctypes
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from llem.config import CampaignSettings

log = logging.getLogger(__name__)

INTERRUPT_EXIT_CODE = 130
BREAKER_EXIT_CODE = 1


@dataclass(frozen=True)
class StopReason:
    """Why a guard stopped the campaign: the message and the exit code the command ends with."""

    message: str
    exit_code: int
    kind: str  # "circuit_breaker" | "wall_clock"


class StopRequest:
    """Raises KeyboardInterrupt in the campaign's thread, so a guard's stop takes the interrupt path.

    On the main thread the interrupt goes through Python's SIGINT handling, so a stop that lands
    while a finished job is recorded waits for the record, as Ctrl-C does. Off the main thread (a
    campaign run from a service's worker thread) it is raised asynchronously in that thread.
    """

    def __init__(self, thread: threading.Thread | None = None,
                 event: Callable[..., None] = lambda **event: None) -> None:
        self.thread = thread or threading.current_thread()
        self.event = event
        self.reason: StopReason | None = None
        self.closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        """No stop after this. A stop being delivered meanwhile completes first (it holds the lock), so its
        interrupt lands while the campaign still handles interrupts, never after it has ended."""
        with self._lock:
            self.closed = True

    def __call__(self, reason: StopReason) -> None:
        with self._lock:
            if self.reason is not None or self.closed:
                return  # one stop is enough; none once the campaign's run is over
            self.reason = reason
            self._deliver(reason)

    def _deliver(self, reason: StopReason) -> None:
        log.warning("%s", reason.message)
        try:
            self.event(kind="stopped", by=reason.kind, message=reason.message)
        except Exception:  # noqa: BLE001 - the stop matters more than its record
            log.exception("llem: could not record the stop")
        if self.thread is threading.main_thread():
            if callable(signal.getsignal(signal.SIGINT)) and self.thread.ident is not None:
                # a real signal: it also wakes the main thread from a blocking wait, as Ctrl-C does
                signal.pthread_kill(self.thread.ident, signal.SIGINT)
            else:
                _thread.interrupt_main()
        elif self.thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread.ident),
                                                       ctypes.py_object(KeyboardInterrupt))


class CircuitBreaker:
    """Counts failures in a row; opens after `threshold`, probes once after the cooldown, then closes or stops.

    `before_start` runs as each job is handed over (it may wait: the cooldown, or another job's probe);
    `finished` sees each job's recorded status. Jobs on parallel workers share one breaker.
    """

    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        *,
        stop: Callable[[StopReason], None],
        say: Callable[[str], None] = lambda message: None,
        event: Callable[..., None] = lambda **event: None,
        wait: Callable[[float], object] | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.stop = stop
        self.say = say
        self.event = event
        self._released = threading.Event()
        self.wait = wait if wait is not None else self._released.wait
        self.consecutive = 0
        self.state = "closed"  # closed | open | cooling | probing | tripped
        self.probe: int | None = None
        self._cond = threading.Condition()

    def release(self) -> None:
        """The campaign is ending: no job waits for a cooldown or a probe any longer."""
        self._released.set()
        with self._cond:
            self._cond.notify_all()

    def before_start(self, job_num: int) -> None:
        with self._cond:
            while self.state in ("cooling", "probing") and not self._released.is_set():
                self._cond.wait(0.5)  # another job is cooling down or probing: its outcome decides
            if self.state != "open" or self._released.is_set():
                return
            self.state = "cooling"
        self.say(f"circuit breaker open: {self.consecutive} jobs failed in a row; waiting {self.cooldown_s:g} s, "
                 f"then job {job_num} runs alone as a probe")
        self.event(kind="circuit_breaker_open", consecutive_failures=self.consecutive,
                   cooldown_s=self.cooldown_s, probe_job=job_num)
        try:
            self.wait(self.cooldown_s)
        finally:
            with self._cond:
                self.state, self.probe = "probing", job_num
                self._cond.notify_all()

    def finished(self, job_num: int, status: str) -> None:
        trip: StopReason | None = None
        with self._cond:
            if status == "completed":
                if self.state != "closed":
                    self.event(kind="circuit_breaker_closed", probe_job=job_num)
                    self.say(f"circuit breaker closed: job {job_num} completed")
                self.consecutive, self.state, self.probe = 0, "closed", None
            elif status == "failed":
                self.consecutive += 1
                if self.state == "probing" and job_num == self.probe:
                    self.state = "tripped"
                    trip = StopReason(
                        f"llem: circuit breaker: {self.consecutive} jobs failed in a row, and the probe job "
                        f"{job_num} failed again after a {self.cooldown_s:g} s pause; the campaign is stopped "
                        "and its remaining jobs are left pending. Fix the cause (the errors are in the manifest)",
                        BREAKER_EXIT_CODE, "circuit_breaker",
                    )
                elif self.state == "closed" and self.consecutive >= self.threshold:
                    self.state = "open"
            self._cond.notify_all()
        if trip is not None:
            self.event(kind="circuit_breaker_tripped", probe_job=job_num, consecutive_failures=self.consecutive)
            self.stop(trip)


class WallClock:
    """Stops the campaign `limit_s` after this run started (a resume starts a new limit)."""

    def __init__(self, limit_s: float, stop: Callable[[StopReason], None], hours: float) -> None:
        self.started = time.monotonic()
        self._timer = threading.Timer(limit_s, stop, args=(StopReason(
            f"llem: the wall-clock limit of {hours:g} h (campaign.execution.wall_clock_timeout_hours) is reached; "
            "the campaign is stopped as if interrupted and finished jobs are kept",
            INTERRUPT_EXIT_CODE, "wall_clock",
        ),))
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


class CampaignGuards:
    """The breaker and the wall clock of one campaign run, and why they stopped it (if they did)."""

    def __init__(self, settings: CampaignSettings, *, say: Callable[[str], None] = lambda m: None,
                 event: Callable[..., None] = lambda **e: None,
                 stop: Callable[[StopReason], None] | None = None) -> None:
        execution = settings.execution
        self.request = StopRequest(event=event)
        self.stop = stop or self.request
        threshold = execution.max_consecutive_failures
        self.breaker = None if not threshold else CircuitBreaker(
            threshold, execution.circuit_breaker_cooldown_seconds, stop=self.stop, say=say, event=event)
        hours = execution.wall_clock_timeout_hours
        self.clock = None if hours is None else WallClock(hours * 3600.0, self.stop, hours)

    @property
    def reason(self) -> StopReason | None:
        return self.request.reason

    def before_start(self, job_num: int) -> None:
        if self.breaker is not None:
            self.breaker.before_start(job_num)

    def finished(self, job_num: int, status: str) -> None:
        if self.breaker is not None:
            self.breaker.finished(job_num, status)

    def start(self) -> None:
        if self.clock is not None:
            self.clock.start()

    def close(self) -> None:
        if self.clock is not None:
            self.clock.cancel()
        self.request.close()
        if self.breaker is not None:
            self.breaker.release()
