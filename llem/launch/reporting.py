"""How a launcher reports its jobs: the interface the launcher owns, and its own reporter for use without a campaign.

The campaign implements `JobReporter` (llem.campaign.JobSession) and records everything there; the
launcher only calls it. Under another sweeper (Hydra's basic one) no campaign is attached, and a
`StandaloneReporter` counts attempts and sends the webhook's events, recording nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llem.launch.outcome import job_outcome

if TYPE_CHECKING:
    from hydra.core.utils import JobReturn

    from llem.config import CampaignSettings
    from llem.notify import Notifier

log = logging.getLogger(__name__)


@runtime_checkable
class JobReporter(Protocol):
    """What a launcher tells about its jobs. Every method is safe to call from several job threads at once."""

    @property
    def settings(self) -> CampaignSettings | None:
        """The campaign's settings (gaps, health checks, restarts, warmup); None outside a llem campaign."""
        ...

    @property
    def records(self) -> bool:
        """Whether each job's outcome is recorded for good (then a launcher need not keep its configs)."""
        ...

    def started(self, job_num: int, *, key: str = "", label: str = "", **placement: Any) -> int:
        """A job was handed to a worker: returns its attempt number."""
        ...

    def finished(self, job_num: int, ret: JobReturn, *, overrides: list[str] | None = None) -> dict[str, Any]:
        """A job ended, completed or failed."""
        ...

    def placed(self, job_num: int, **fields: Any) -> None:
        """Where a job runs (GPUs, SLURM job id, node), once known."""
        ...

    def interrupted(self, job_num: int | None) -> None:
        """The launcher was stopped while `job_num` ran."""
        ...

    def event(self, **event: Any) -> None:
        """An internal record: a health check, a restart, a gap."""
        ...

    def say(self, message: str) -> None:
        """A line for the person watching."""
        ...

    def gap(self, seconds: float, *, before_job: int | None = None, kind: str = "config",
            where: str | None = None) -> None:
        """A gap between jobs is about to be slept."""
        ...


class StandaloneReporter:
    """A launcher's reporter without a campaign: attempts counted, webhook events sent, nothing recorded."""

    def __init__(self, settings: CampaignSettings | None, campaign_name: str,
                 notifier: Notifier | None = None) -> None:
        self._settings = settings
        self.campaign_name = campaign_name
        self.notifier = notifier
        self._attempts: dict[int, int] = {}
        self._lock = threading.Lock()
        self.stopping = False  # after `interrupted`: what the job threads still report is the stop's doing

    @classmethod
    def for_campaign(cls, settings: CampaignSettings | None, campaign_name: str) -> StandaloneReporter:
        from llem.notify import notifier_for

        return cls(settings, campaign_name, notifier_for(settings, campaign_name))

    @property
    def settings(self) -> CampaignSettings | None:
        return self._settings

    @property
    def records(self) -> bool:
        return False

    def attempts(self, job_num: int) -> int:
        return self._attempts.get(job_num, 0)

    def started(self, job_num: int, *, key: str = "", label: str = "", **placement: Any) -> int:
        with self._lock:
            if self.stopping:
                return self.attempts(job_num)
            self._attempts[job_num] = attempt = self._attempts.get(job_num, 0) + 1
        return attempt

    def finished(self, job_num: int, ret: JobReturn, *, overrides: list[str] | None = None) -> dict[str, Any]:
        outcome = job_outcome(ret)
        if self.notifier is not None and not (self.stopping and outcome["status"] == "failed"):
            self.notifier.job_finished(
                job_num=job_num, overrides=list(overrides if overrides is not None else (ret.overrides or [])),
                status=outcome["status"], error=outcome["error"], result_path=outcome.get("result_path"),
                attempt=self.attempts(job_num),
            )
        return outcome

    def placed(self, job_num: int, **fields: Any) -> None:
        return None

    def interrupted(self, job_num: int | None) -> None:
        self.stopping = True
        log.debug("llem: interrupted during job %s", job_num)

    def event(self, **event: Any) -> None:
        log.debug("llem: %s", " ".join(f"{k}={v}" for k, v in event.items()))

    def say(self, message: str) -> None:
        log.info("llem: %s", message)

    def gap(self, seconds: float, *, before_job: int | None = None, kind: str = "config",
            where: str | None = None) -> None:
        self.event(kind="gap", gap=kind, seconds=seconds, before_job=before_job, worker=where)
