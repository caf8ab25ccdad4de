"""What a launcher tells the campaign about its jobs, recorded in one place.

Launchers never write campaign state themselves: they call `started`, `finished`, `placed`
and `event` on the reporter the campaign attaches (llem.launch.reporting.JobReporter, which
this session implements), and the session records the change, counts the attempt (once),
updates the progress display and sends notifications.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from hydra.core.utils import JobReturn

from llem.campaign.state import CampaignState
from llem.config import CampaignSettings
from llem.launch.interrupts import interrupts_deferred
from llem.launch.outcome import first_line, job_outcome
from llem.notify import Notifier, job_figures
from llem.plan.manifest import FINISHED, ManifestJob, utc_now

log = logging.getLogger(__name__)


class JobSession:
    """The campaign's side of a launcher (a llem.launch.reporting.JobReporter): job lifecycle calls, thread-safe."""

    def __init__(
        self,
        state: CampaignState | None,
        settings: CampaignSettings | None,
        *,
        notifier: Notifier | None = None,
        campaign_name: str | None = None,
    ) -> None:
        self.state = state
        self.settings = settings
        self.notifier = notifier
        self.campaign_name = campaign_name
        self.progress: Any = None  # a CampaignProgress while a repetition runs
        self._attempts: dict[int, int] = {}  # jobs the state does not hold
        self._lock = threading.RLock()
        self.on_finished: Callable[[int, str], None] | None = None
        # runs before a job is handed over, outside the lock; it may wait (the circuit breaker's cooldown)
        self.before_start: Callable[[int], None] | None = None
        # set by the first `interrupted`: the launcher is stopping, so the jobs its threads still report are the
        # stop's doing (a killed worker, a job not begun), and none of them is started or recorded as failed
        self.stopping = False

    @property
    def records(self) -> bool:
        """Whether job outcomes are recorded in the campaign state (then launchers need not keep their configs)."""
        return self.state is not None

    # ------------------------------------------------------------------ lookups
    def job(self, job_num: int) -> ManifestJob | None:
        if self.state is None or not self.state.has_job(job_num):
            return None
        return self.state.job(job_num)

    def attempts(self, job_num: int) -> int:
        job = self.job(job_num)
        return self._attempts.get(job_num, 0) if job is None else job.attempts

    # ------------------------------------------------------------------ lifecycle
    def started(self, job_num: int, *, key: str = "", label: str = "", **placement: Any) -> int:
        """A job was handed to a worker: count the attempt, mark it running. Returns the attempt number."""
        if self.before_start is not None and not self.stopping:
            self.before_start(job_num)
        with self._lock:
            if self.stopping:
                return self.attempts(job_num)
            attempt = self.attempts(job_num) + 1
            if self.job(job_num) is None:
                self._attempts[job_num] = attempt
            else:
                assert self.state is not None
                self.state.update({job_num: {
                    "status": "running", "started_at": utc_now(), "error": None, "attempts": attempt, **placement
                }})  # fmt: skip
            if self.progress is not None:
                self.progress.job_started(job_num, key, label)
        return attempt

    def finished(self, job_num: int, ret: JobReturn, *, overrides: list[str] | None = None) -> dict[str, Any]:
        """A job ended (completed or failed): record its outcome, show it, notify. Returns the recorded fields."""
        outcome = {**job_outcome(ret), "completed_at": utc_now()}
        # the result is read and validated before the lock: parallel jobs must not wait on each other's files
        figures = None if self.notifier is None else job_figures(outcome.get("result_path"))
        with interrupts_deferred():
            self._record_finished(job_num, ret, outcome, overrides, figures)
        return outcome

    def _record_finished(self, job_num: int, ret: JobReturn, outcome: dict[str, Any],
                         overrides: list[str] | None, figures: dict[str, float | None] | None) -> None:
        with self._lock:
            job = self.job(job_num)
            if outcome["status"] == "failed" and (self.stopping or (job is not None and job.status == "interrupted")):
                return  # the stop killed its worker: it was interrupted (and runs again on resume), not failed
            if job is not None:
                assert self.state is not None
                self.state.update({job_num: outcome})
            if self.progress is not None:
                reason = None if outcome["error"] is None else first_line(outcome["error"])
                self.progress.job_finished(job_num, outcome["status"], reason=reason)
            if self.on_finished is not None:
                self.on_finished(job_num, outcome["status"])
            if self.notifier is not None:  # queued under the lock (it never blocks): in order with a stop's events
                self.notifier.job_finished(
                    job_num=job_num, overrides=list(overrides if overrides is not None else (ret.overrides or [])),
                    status=outcome["status"], error=outcome["error"], result_path=outcome.get("result_path"),
                    cycle=None if job is None else job.cycle, repetition=None if job is None else job.repetition,
                    attempt=self.attempts(job_num), backend=None if job is None else job.backend, figures=figures,
                )

    def placed(self, job_num: int, **fields: Any) -> None:
        """Where a job ran (SLURM job id, node, GPUs), once the launcher knows."""
        with self._lock:
            if self.job(job_num) is not None:
                assert self.state is not None
                self.state.update({job_num: fields})

    def interrupted(self, job_num: int | None) -> None:
        """The launcher was stopped while `job_num` was its current job. A job already recorded as finished keeps
        its outcome: the interrupt may land after the record, before the launcher moves on."""
        with self._lock:
            self.stopping = True
            job = None if job_num is None else self.job(job_num)
            if job is not None and job.status not in FINISHED and job.status != "failed":
                assert self.state is not None
                self.state.update({job_num: {
                    "status": "interrupted", "error": "interrupted by the user", "completed_at": utc_now()
                }})  # fmt: skip
        self.event(kind="interrupted", job_num=job_num)

    def event(self, **event: Any) -> None:
        """An internal record (health check, restart): the campaign state and the debug log, not the console."""
        log.debug("llem: %s", " ".join(f"{k}={v}" for k, v in event.items()))
        if self.state is not None:
            with self._lock:
                self.state.event(event)

    def say(self, message: str) -> None:
        """A line for the person watching (a gap, a restart): above the bar, or a log line."""
        if self.progress is not None:
            self.progress.log(message)
        else:
            log.info("llem: %s", message)

    def gap(
        self, seconds: float, *, before_job: int | None = None, kind: str = "config", where: str | None = None
    ) -> None:
        """A gap between jobs is about to be slept: recorded (a stopped campaign shows it was waiting, not running
        a job), and the ETA counts it apart from job time."""
        self.event(kind="gap", gap=kind, seconds=seconds, before_job=before_job, worker=where)
        if self.progress is not None:
            self.progress.gap(seconds)
