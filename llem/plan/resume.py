"""Resume a campaign from its manifest: keep finished work, find results a crash left unrecorded.

Jobs are identified by (config_hash, cycle, repetition), so a re-planned campaign maps onto
the manifest's jobs whatever their numbers. A job counts as completed only when its
result.json validates and carries the job's config hash; atomic writes mean a crash
leaves either a whole result or none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from llem.measure.result import RESULT_FILENAME, read_result
from llem.plan.manifest import CampaignManifest, ManifestJob, utc_now
from llem.plan.planner import Plan

JobKey = tuple[str | None, int, int]
# where job `num` with these overrides writes its result.json (None: not known before the job runs)
ResultPath = Callable[[int, Sequence[str]], "str | None"]


class PlanChanged(RuntimeError):
    """The campaign definition differs from the manifest's; the message says how."""


@dataclass
class ResumeReport:
    completed: int = 0
    recovered: list[int] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    lost_results: list[int] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.completed} job(s) already completed"]
        if self.recovered:
            out.append(f"{len(self.recovered)} finished before the crash were recorded now: {self.recovered}")
        if self.interrupted:
            out.append(f"{len(self.interrupted)} left running by a dead orchestrator are interrupted: {self.interrupted}")
        if self.added:
            out.append(f"{len(self.added)} new job(s) added: {self.added}")
        if self.dropped:
            out.append(f"{len(self.dropped)} job(s) no longer in the campaign are skipped: {self.dropped}")
        if self.lost_results:
            out.append(f"{len(self.lost_results)} completed job(s) whose result.json is missing will run again: "
                       f"{self.lost_results}")
        return out


def job_key(job: ManifestJob) -> JobKey:
    return (job.config_hash, job.cycle, job.repetition)


def result_is_complete(job: ManifestJob) -> bool:
    """A whole, valid result.json for this job's configuration exists."""
    if not job.result_path or not Path(job.result_path).is_file():
        return False
    try:
        return read_result(Path(job.result_path)).config_hash == job.config_hash
    except (ValidationError, ValueError, OSError):
        return False


def _describe(jobs: list[ManifestJob]) -> str:
    sample = "; ".join(" ".join(j.overrides) or "defaults" for j in jobs[:3])
    return f"{len(jobs)} ({sample}{'; ...' if len(jobs) > 3 else ''})"


def numbered_dirs(sweep_dir: Path) -> ResultPath:
    """Hydra's default layout: job n writes `<sweep dir>/<n>/result.json`."""

    def result_path(num: int, overrides: Sequence[str]) -> str | None:
        return str(sweep_dir / str(num) / RESULT_FILENAME)

    return result_path


def reconcile(
    manifest: CampaignManifest,
    plan: Plan,
    new_manifest: CampaignManifest,
    *,
    allow_changes: bool,
    result_path: ResultPath | None = None,
) -> ResumeReport:
    """Bring `manifest` in line with a freshly planned `new_manifest` (same plan); mutates `manifest`.

    `result_path` says where a job writes its result (it knows a custom hydra.sweep.subdir); by default the sweep
    dir's `<num>/result.json`. It places added jobs, and finds the result of a job that may have run before a crash
    but whose path was never recorded."""
    report = ResumeReport()
    where = result_path or numbered_dirs(Path(manifest.sweep_dir))
    if Path(manifest.sweep_dir) != Path(new_manifest.sweep_dir):
        raise PlanChanged(
            f"the manifest belongs to the campaign in {manifest.sweep_dir}, not {new_manifest.sweep_dir}: "
            "give each campaign its own campaign.io.state_dir"
        )
    planned = {job_key(j): j for j in new_manifest.jobs if j.status == "pending" and j.repetition == 0}
    existing = {
        job_key(j): j
        for j in manifest.jobs
        if j.status not in ("invalid", "skipped") and j.repetition == 0 and not j.retired
    }
    if manifest.config_hash != plan.plan_hash():
        added = [j for k, j in planned.items() if k not in existing]
        removed = [j for k, j in existing.items() if k not in planned]
        what = []
        if added:
            what.append(f"jobs added: {_describe(added)}")
        if removed:
            what.append(f"jobs removed: {_describe(removed)}")
        if not what:
            what.append("the job order changed")
        if not allow_changes:
            raise PlanChanged(
                "the campaign definition changed since this campaign dir was planned "
                f"({manifest.created_at}): {'; '.join(what)}. Re-run the original command to resume, use a new "
                "hydra.sweep.dir, or pass hydra.sweeper.resume_changed=true to keep the results and add the new jobs."
            )
        next_num = max((j.job_num for j in manifest.jobs), default=-1) + 1
        for job in added:
            job = job.model_copy(deep=True)
            job.job_num = next_num
            job.result_path = where(next_num, job.overrides)
            manifest.jobs.append(job)
            report.added.append(next_num)
            next_num += 1
        for job in removed:
            job.retired = True  # kept with its result, never copied into new repetitions
            if job.status != "completed":
                job.status = "skipped"
                job.error = "no longer part of the campaign"
                report.dropped.append(job.job_num)
        manifest.config_hash = plan.plan_hash()
        manifest.swept_keys = list(dict.fromkeys([*manifest.swept_keys, *new_manifest.swept_keys]))
        manifest.events.append({"at": utc_now(), "kind": "plan_changed", "detail": "; ".join(what)})
    for job in manifest.jobs:
        if job.status in ("invalid", "skipped"):
            continue
        if job.status == "running":
            job.status = "interrupted"
            job.error = "the orchestrator stopped while this job ran"
            report.interrupted.append(job.job_num)
        if job.result_path is None and (job.attempts or job.status != "pending"):  # it may have written one
            job.result_path = where(job.job_num, job.overrides)
        complete = result_is_complete(job)
        if job.status == "completed":
            if complete:
                report.completed += 1
            else:
                job.status = "pending"
                job.error = "result.json was missing or invalid when the campaign resumed"
                report.lost_results.append(job.job_num)
        elif complete:
            job.status = "completed"
            job.error = None
            job.completed_at = job.completed_at or utc_now()
            report.recovered.append(job.job_num)
            report.completed += 1
    return report


def runnable(manifest: CampaignManifest, max_attempts: int, repetition: int | None = None) -> list[ManifestJob]:
    """Jobs still to run: pending, interrupted by the user, or failed/crashed with attempts left.

    A job a dead orchestrator left running counts its attempt, so a configuration that takes
    the machine down is not retried forever.
    """
    out = []
    for job in manifest.jobs:
        if repetition is not None and job.repetition != repetition:
            continue
        by_user = job.status == "interrupted" and job.error == "interrupted by the user"
        if job.status == "pending" or by_user or (
            job.status in ("failed", "interrupted") and job.attempts < max_attempts
        ):
            out.append(job)
    return sorted(out, key=lambda j: j.job_num)
