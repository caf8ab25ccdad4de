"""Campaign bookkeeping for sweepers that attach a manifest path instead of a campaign session.

The llem sweeper of this version calls `attach_campaign(manifest_path=..., settings=...)` and, for a
launcher that has `attach_campaign`, leaves the jobs' status to it. This adapter keeps the manifest
up to date the way the local launcher does: running when submitted, the outcome when collected,
and where each job ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from llem.launch.runner import result_path_of, retryable
from llem.plan.manifest import read_manifest, update_jobs, utc_now


class ManifestSession:
    def __init__(self, manifest_path: Path) -> None:
        self.path = Path(manifest_path)
        self.attempts: dict[int, int] = {}

    def _update(self, changes: dict[int, dict[str, Any]]) -> None:
        known = {j.job_num for j in read_manifest(self.path).jobs}
        changes = {n: c for n, c in changes.items() if n in known}  # jobs of another sweeper are not listed
        if changes:
            update_jobs(self.path, changes)

    def placed(self, job_num: int, **fields: Any) -> None:
        self._update({job_num: fields})

    def started(self, job_nums: list[int]) -> None:
        current = {j.job_num: j.attempts for j in read_manifest(self.path).jobs}
        now = utc_now()
        for n in job_nums:
            self.attempts[n] = current.get(n, 0) + 1
        self._update({n: {"status": "running", "started_at": now, "error": None, "attempts": self.attempts[n]}
                      for n in job_nums})

    def finished(self, job_num: int, ret: JobReturn) -> None:
        done: dict[str, Any] = {"completed_at": utc_now(), "result_path": result_path_of(ret)}
        if job_num in self.attempts:
            done["attempts"] = self.attempts[job_num]
        if ret.status == JobStatus.COMPLETED:
            done.update(status="completed", error=None)
        else:
            error = ret._return_value
            done.update(status="failed", error=f"{type(error).__name__}: {error}", retryable=retryable(error))
        self._update({job_num: done})
