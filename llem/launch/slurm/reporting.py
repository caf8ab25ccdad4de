"""What the SLURM launcher tells the campaign, through the same session calls the local launcher makes.

`started(job_num, key=, label=, slurm_job_id=, node=)` when the group reports that the job began on its node,
`finished(job_num, ret)` when the group reports its outcome, `placed(job_num, ...)` when the SLURM job id
or node becomes known, and `event(...)` / `say(...)`. Each job is started once and finished once per
outcome, so the campaign's state, progress, report and webhooks follow the jobs as they run. Without a
session (a llem launcher under another sweeper) nothing is reported.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.utils import JobReturn, filter_overrides

log = logging.getLogger(__name__)


class JobReports:
    """The launcher's side of the campaign session: job starts, ends and placements, each once."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.known: dict[int, tuple[str | None, str | None]] = {}
        self._started: set[int] = set()
        self._finished: dict[int, str] = {}  # job num → the status reported

    def has_started(self, job_num: int) -> bool:
        return job_num in self._started

    def has_finished(self, job_num: int) -> bool:
        return job_num in self._finished

    def started(self, job_num: int, overrides: list[str], key: str = "", slurm_job_id: str | None = None,
                node: str | None = None) -> None:
        """The job began (or is failed before it could): its attempt counts, it shows as running."""
        if job_num in self._started:
            return
        self._started.add(job_num)
        if self.session is None:
            return
        placement: dict[str, Any] = {}
        if slurm_job_id is not None:
            placement["slurm_job_id"] = str(slurm_job_id)
            self.known[job_num] = (str(slurm_job_id), None if node is None else str(node))
        if node is not None:
            placement["node"] = str(node)
        try:
            self.session.started(job_num, key=key, label=" ".join(filter_overrides(list(overrides))), **placement)
        except Exception as error:  # noqa: BLE001 - bookkeeping must not fail the jobs
            log.warning("llem: could not record that job %d started: %s", job_num, error)

    def finished(self, job_num: int, ret: JobReturn, overrides: list[str], key: str = "") -> None:
        """The job ended: recorded once (again only if a requeued group changed its outcome)."""
        self.started(job_num, overrides, key)
        status = str(ret.status)
        if self._finished.get(job_num) == status:
            return
        self._finished[job_num] = status
        if self.session is None:
            return
        try:
            self.session.finished(job_num, ret, overrides=list(overrides))
        except Exception as error:  # noqa: BLE001 - bookkeeping must not fail the jobs
            log.warning("llem: could not record job %d's outcome: %s", job_num, error)

    def placed(self, job_num: int, slurm_job_id: str | None, node: str | None = None) -> None:
        """Where a job runs, once per new (SLURM job, node)."""
        if self.session is None or slurm_job_id is None:
            return
        if self.known.get(job_num) == (slurm_job_id, node):
            return
        self.known[job_num] = (slurm_job_id, node)
        fields: dict[str, Any] = {"slurm_job_id": str(slurm_job_id)}
        if node is not None:
            fields["node"] = str(node)
        try:
            self.session.placed(job_num, **fields)
        except Exception as error:  # noqa: BLE001 - bookkeeping must not fail the jobs
            log.warning("llem: could not record where job %d runs: %s", job_num, error)

    def event(self, **event: Any) -> None:
        if self.session is not None:
            try:
                self.session.event(**event)
            except Exception as error:  # noqa: BLE001
                log.warning("llem: could not record an event: %s", error)

    def say(self, message: str) -> None:
        if self.session is not None and hasattr(self.session, "say"):
            self.session.say(message)
        else:
            log.warning("llem: %s", message)
