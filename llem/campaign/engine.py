"""Run a planned campaign: lock, state, resume, preflight, repetitions, retries, daemon, summary.

The engine drives any Hydra `Launcher`. A llem launcher (llem.launch.jobs.JobLauncher) gets each
job as a planned value (llem.launch.jobs.Job) and reports its start and end to the campaign's
`JobSession` itself; for any other launcher (Hydra's basic launcher, submitit) the engine records
a batch as started before handing it over and records the returns after. Either way the campaign
state has one owner, and attempts are counted in one place (`JobSession.started`).
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llem.atomic import atomic_write_text, remove_stale_temps
from llem.campaign.files import attach_config_files, collect_results, write_job_configs
from llem.campaign.guards import CampaignGuards
from llem.campaign.lock import CampaignLock, CampaignLocked
from llem.campaign.planning import CampaignError, PlannedCampaign, invalid_report, job_value
from llem.campaign.preflight import Workers, preflight
from llem.campaign.preflight import report as preflight_report
from llem.campaign.session import JobSession
from llem.campaign.state import CampaignState
from llem.config import CampaignSettings
from llem.config.campaign import CampaignDaemonConfig, campaign_id
from llem.launch.gpus import GpuSelectionError
from llem.launch.interrupts import interrupts_deferred, sigterm_as_interrupt
from llem.launch.jobs import JobLauncher
from llem.launch.outcome import first_line
from llem.measure.result import RESULT_FILENAME
from llem.notify import Notifier, notifier_for
from llem.plan import schedule
from llem.plan.manifest import CampaignManifest, ManifestJob, utc_now
from llem.plan.planner import build_manifest
from llem.plan.resume import PlanChanged, reconcile, runnable

log = logging.getLogger(__name__)


@dataclass
class CampaignOptions:
    """How the engine treats the plan (the llem sweeper's options)."""

    max_batch_size: int | None = None
    skip_invalid: bool = False
    dry_run: bool = False
    max_attempts: int = 2
    resume_changed: bool = False


@dataclass
class CampaignOutcome:
    """How a campaign run ended."""

    manifest_path: Path
    counts: dict[str, int]
    failed: list[ManifestJob] = field(default_factory=list)
    summary_path: Path | None = None
    dry_run: bool = False
    returns: list[Sequence[Any]] = field(default_factory=list)  # the launchers' JobReturns, per batch

    @property
    def ok(self) -> bool:
        return not self.failed

    def failure_summary(self, most: int = 10) -> str:
        """One line per failed job (its overrides and the first line of its error), then where the rest is."""
        lines = [f"llem: {len(self.failed)} job(s) failed:"]
        for job in self.failed[:most]:
            reason = first_line(job.error or "no error recorded", limit=300)
            lines.append(f"  job {job.job_num} ({' '.join(job.overrides) or 'defaults'}): {reason}")
        if len(self.failed) > most:
            lines.append(f"  ... and {len(self.failed) - most} more")
        lines.append(f"full errors and tracebacks: {self.manifest_path}")
        return "\n".join(lines)


class CampaignInterrupted(Exception):
    """Ctrl-C or SIGTERM (or a guard's stop): finished jobs are kept; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _contiguous_batches(jobs: list[ManifestJob], size: int | None) -> list[list[ManifestJob]]:
    """Launchers number a batch's jobs from `initial_job_idx`, so a batch holds consecutive job numbers."""
    batches: list[list[ManifestJob]] = []
    for job in jobs:
        last = batches[-1] if batches else None
        if last and last[-1].job_num + 1 == job.job_num and (not size or size < 1 or len(last) < size):
            last.append(job)
        else:
            batches.append([job])
    return batches


class Campaign:
    """One campaign dir: its plan, its state, and the launcher its jobs run on."""

    def __init__(
        self,
        planned: PlannedCampaign,
        *,
        launcher: Any,
        sweep_dir: Path,
        options: CampaignOptions | None = None,
        campaign_name: str = "campaign",
        custom_subdir: bool = False,
        workers: Workers | None = None,
        multirun_yaml: str | None = None,
        say: Callable[[str], None] = _say,
        job_result_path: Callable[[int, Sequence[str]], str | None] | None = None,
    ) -> None:
        self.plan = planned.plan
        self.settings: CampaignSettings = planned.settings
        self.composer = planned.composer
        self.launcher = launcher
        self.sweep_dir = Path(sweep_dir).absolute()
        self.options = options or CampaignOptions()
        self.campaign_name = self.settings.campaign_name or campaign_name
        self.custom_subdir = custom_subdir
        # where job n with these overrides writes its result under a custom hydra.sweep.subdir (None: unknown)
        self.job_result_path = job_result_path
        self.workers = workers
        self.multirun_yaml = multirun_yaml
        self.say = say
        from llem.campaign.planning import manifest_path

        self.manifest_path = manifest_path(self.sweep_dir, self.settings)
        self.state = CampaignState(self.manifest_path)
        self.session: JobSession | None = None
        self._guards: CampaignGuards | None = None  # the circuit breaker and the wall clock, while jobs run
        self.notifier: Notifier | None = None
        self.returns: list[Sequence[Any]] = []
        self._gpu_needs: dict[str, int] = {}  # config hash -> GPUs its engine uses, worked out once
        self._state_open = False  # the state is created or reconciled (and committed): safe to record in
        self._end_notified = False  # campaign_ended went out: an interrupt afterwards sends no second one

    # ------------------------------------------------------------------ entry
    def run(self) -> CampaignOutcome:
        """Plan → resume → preflight → run (repetitions, retries) → summary. Raises CampaignError for user
        mistakes (nothing launched) and CampaignInterrupted on Ctrl-C/SIGTERM."""
        plan = self.plan
        if plan.invalid and not self.options.skip_invalid:
            raise CampaignError(invalid_report(plan, launched=False))
        for job in plan.invalid:
            job.status = "skipped"
        self._check_distinct_result_dirs()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            with sigterm_as_interrupt():
                try:
                    with CampaignLock(self.manifest_path.parent) as lock:
                        if lock.stale_owner:
                            self.say(f"llem: the previous orchestrator (PID {lock.stale_owner.get('pid')} on "
                                     f"{lock.stale_owner.get('host')}) is gone; taking over its campaign")
                        try:
                            return self._run_locked()
                        finally:
                            self.state.close()
                except KeyboardInterrupt:  # while taking the lock or closing the state: nothing left to record
                    try:
                        self._notify_interrupted()
                        if self.notifier is not None:
                            self.notifier.close()
                    except KeyboardInterrupt:
                        log.warning("llem: interrupted again while recording the interruption")
                    raise self._interruption() from None
        except CampaignLocked as error:
            raise CampaignError(f"llem: {error}") from None
        except GpuSelectionError as error:  # raised before the launcher starts a job: nothing ran
            raise CampaignError(f"llem: {error}") from None

    # ------------------------------------------------------------------ state
    def _fresh_manifest(self) -> CampaignManifest:
        manifest = build_manifest(self.plan, campaign_name=self.campaign_name, sweep_dir=self.sweep_dir)
        if self.custom_subdir:
            for job in manifest.jobs:
                job.result_path = None  # known once the launcher reports the job's output dir
        attach_config_files(manifest, self.sweep_dir, self.settings.io)
        return manifest

    def _check_distinct_result_dirs(self) -> None:
        """A custom `hydra.sweep.subdir` must give every job its own directory, or cycles overwrite each other's
        result.json and a resume takes one job's result for another's. Checked on a sample before anything runs
        (two cycles of one configuration, two configurations): resolving every job's dir would cost more than
        the plan. A subdir without the job's number fails the first check, the usual mistake."""
        if not self.custom_subdir or self.job_result_path is None:
            return
        jobs = self.plan.runnable
        if len(jobs) < 2:
            return
        first = jobs[0]
        pairs = [next((j for j in jobs[1:] if j.config.overrides == first.config.overrides), None),
                 next((j for j in jobs[1:] if j.config.overrides != first.config.overrides), None)]
        path = self.job_result_path(first.job_num, first.config.overrides)
        for other in pairs:
            if other is None or path is None:
                continue
            if self.job_result_path(other.job_num, other.config.overrides) == path:
                raise CampaignError(
                    f"llem: hydra.sweep.subdir gives jobs {first.job_num} and {other.job_num} the same directory "
                    f"({Path(path).parent}), so one result.json would overwrite the other; add ${{hydra.job.num}} "
                    f"to the subdir (e.g. hydra.sweep.subdir='${{hydra.job.num}}_${{hydra.job.override_dirname}}')"
                )

    def _result_path(self, job_num: int, overrides: Sequence[str]) -> str | None:
        """Where job `job_num` writes its result: the sweep dir's `<num>/`, or the custom hydra.sweep.subdir's dir
        (None when that cannot be resolved before the job runs; the launcher reports it then)."""
        if not self.custom_subdir:
            return str(self.sweep_dir / str(job_num) / RESULT_FILENAME)
        return None if self.job_result_path is None else self.job_result_path(job_num, overrides)

    def _open_state(self) -> None:
        fresh = self._fresh_manifest()
        # we hold the lock, so temp files here are leftovers of a killed writer, never work in progress, except in
        # the dirs of jobs a launcher's jobs outlived the orchestrator in (SLURM jobs still running)
        live = getattr(self.launcher, "live_job_dirs", None)
        busy = {Path(d).absolute() for d in live(self.sweep_dir)} if callable(live) else set()
        for directory in (self.manifest_path.parent, self.sweep_dir, *self.sweep_dir.glob("*/")):
            if Path(directory).absolute() not in busy:
                remove_stale_temps(directory)
        if not self.state.exists():
            self.state.replace(fresh)
            self._state_open = True
            return
        manifest = self.state.load()
        try:
            report = reconcile(manifest, self.plan, fresh, allow_changes=self.options.resume_changed,
                               result_path=self._result_path)
        except PlanChanged as error:
            raise CampaignError(f"llem: {error}") from None
        attach_config_files(manifest, self.sweep_dir, self.settings.io)
        for job in manifest.jobs:
            job.retryable = True  # the environment may have been fixed since; preflight checks again
        manifest.campaign_id = campaign_id(manifest.campaign_name)
        manifest.group_by = list(self.settings.group_by)  # grouping never changes what is measured
        manifest.report = self.settings.report.model_dump()  # nor do the report's carbon and cost factors
        if not self.options.dry_run:
            manifest.events.append({"at": utc_now(), "kind": "resumed", "pid": os.getpid(), "detail": report.lines()})
            self.state.replace(manifest)
        self._state_open = True
        self.say("llem: resuming campaign '%s': %s" % (manifest.campaign_name, "; ".join(report.lines())))

    def _run_locked(self) -> CampaignOutcome:
        """Everything done under the campaign lock. A Ctrl-C or SIGTERM anywhere in it (opening the state, the
        preflight, the run, the finish) ends the same way: running jobs recorded as interrupted, the webhook told,
        and CampaignInterrupted with how to resume."""
        frozen = False
        try:
            if self.multirun_yaml is not None:
                atomic_write_text(self.sweep_dir / "multirun.yaml", self.multirun_yaml)
            self._open_state()
            frozen = _freeze_long_lived()
            log.info("planned %d job(s) with %d composition(s); manifest %s",
                     len(self.plan.runnable), self.composer.compositions, self.manifest_path)  # fmt: skip
            if self.options.dry_run:
                from llem.plan.memory import plan_memory
                from llem.plan.table import print_memory, print_plan

                memory = plan_memory(self.plan.resolved)
                print_plan(self.plan, memory=memory)
                print_memory(self.plan, memory)
                print(f"manifest written to {self.manifest_path}; dry run: nothing launched")
                return CampaignOutcome(self.manifest_path, self.state.manifest.counts(), dry_run=True)
            if self.plan.invalid:
                self.say(invalid_report(self.plan, launched=True))
            self.notifier = notifier_for(self.settings, self.state.manifest.campaign_name)
            self.session = JobSession(self.state, self.settings, notifier=self.notifier,
                                      campaign_name=self.campaign_name)  # fmt: skip
            if isinstance(self.launcher, JobLauncher):
                self.launcher.attach(self.session)
            guards = self._guards = CampaignGuards(self.settings, say=self.session.say, event=self.session.event)
            self.session.before_start, self.session.on_finished = guards.before_start, guards.finished
            for note in self.plan.notes:
                self.say(f"llem: note: {note}")
            try:
                guards.start()
                self._preflight()
                self._run_schedule()
            finally:
                guards.close()
                self._stop_launcher()
            return self._finish()
        except KeyboardInterrupt:
            self._interrupted()
            raise self._interruption() from None
        finally:
            if frozen:
                gc.unfreeze()
            if self.notifier is not None:
                self.notifier.close()  # waits for queued events at most the notification timeout

    def _stop_launcher(self) -> None:
        """Stop the launcher's workers and wait for its job threads (its `finish`), whole even under Ctrl-C: a
        worker left running would outlive the campaign, and a job thread would write to a closed state."""
        finish = getattr(self.launcher, "finish", None)
        if finish is not None:
            with interrupts_deferred():
                finish()

    def _run_schedule(self) -> None:
        settings = self.settings
        if settings.daemon is not None and settings.daemon.enabled:
            self._run_daemon(settings.daemon)
        elif settings.schedule.restricts_start:  # one run, started at a time and/or on an allowed day
            self._run_daemon(CampaignDaemonConfig(enabled=True, at=settings.schedule.at))
        else:
            self._run_repetition(0)

    # ------------------------------------------------------------------ preflight
    def _preflight(self) -> None:
        """Fail, before anything launches, the jobs that cannot run on this machine; print every problem at once."""
        from llem.campaign.gpu_preflight import gpu_settings_problems, restore_stale_gpus

        restore_stale_gpus(self.say)  # GPUs a crashed run left changed get their original settings back first
        todo = runnable(self.state.manifest, self.options.max_attempts)
        resolved = self.plan.resolved
        jobs = [(j.job_num, resolved[j.config_hash]) for j in todo if j.config_hash in resolved]
        problems = preflight(jobs, self.workers) if self.workers is not None else {}
        validated = [(j.job_num, self.plan.experiments[j.config_hash]) for j in todo
                     if j.config_hash in self.plan.experiments]  # as the plan validated them: not validated again
        for n, reason in gpu_settings_problems(validated, launcher=self.launcher, workers=self.workers).items():
            problems[n] = f"{problems[n]}; {reason}" if n in problems else reason
        if not problems:
            return
        self.say(preflight_report(problems))
        now = utc_now()
        assert self.session is not None
        notifier = self.session.notifier
        with interrupts_deferred():  # recorded failures and their notifications go together
            self.state.update({
                n: {"status": "failed", "error": f"preflight: {reason}", "retryable": False, "completed_at": now}
                for n, reason in problems.items()
            })  # fmt: skip
            for n in problems if notifier is not None else ():
                job = self.state.job(n)
                notifier.job_finished(
                    job_num=n, overrides=job.overrides, status="failed", error=job.error, cycle=job.cycle,
                    repetition=job.repetition, attempt=job.attempts, backend=job.backend,
                )

    # ------------------------------------------------------------------ running
    def _launch(self, jobs: list[ManifestJob]) -> None:
        session = self.session
        assert session is not None
        launcher = self.launcher
        for batch in _contiguous_batches(jobs, self.options.max_batch_size):
            resolved = self.plan.resolved
            write_job_configs(self.sweep_dir, self.settings.io,
                              {j.config_hash: resolved[j.config_hash] for j in batch if j.config_hash in resolved})
            if isinstance(launcher, JobLauncher):  # it reports each job itself
                values = [job_value(j, self.plan, self._gpu_needs, self.composer) for j in batch]
                self.returns.append(launcher.run_jobs(values))
                continue
            for job in batch:
                session.started(job.job_num, key=job.backend, label=" ".join(job.overrides))
            results = launcher.launch([list(j.overrides) for j in batch], initial_job_idx=batch[0].job_num)
            self.returns.append(results)
            for job, ret in zip(batch, results, strict=True):
                session.finished(job.job_num, ret, overrides=list(job.overrides))

    def _progress(self, repetition: int, todo: list[ManifestJob], done: int) -> Any:
        from llem.progress import CampaignProgress, GapPlan

        daemon = self.settings.daemon is not None and self.settings.daemon.enabled
        execution = self.settings.execution
        gaps = GapPlan(execution.config_gap_seconds, execution.cycle_gap_seconds,
                       [(j.job_num, j.cycle) for j in todo])  # fmt: skip
        title = f"repetition {repetition}" if daemon else None
        return CampaignProgress(len(todo) + done, quiet=daemon, already_done=done, gaps=gaps, title=title,
                                swept_keys=self.state.manifest.swept_keys)  # labels show what varies

    def _run_repetition(self, repetition: int) -> None:
        """Run every job of one repetition that is not done, then retry failures within max_attempts."""
        session = self.session
        assert session is not None
        manifest = self.state.manifest
        max_attempts = self.options.max_attempts
        todo = [j for j in runnable(manifest, max_attempts, repetition) if j.retryable]
        done = sum(1 for j in manifest.jobs if j.repetition == repetition and j.status == "completed")
        with self._progress(repetition, todo, done) as progress:
            session.progress = progress
            try:
                while todo:
                    before = {j.job_num: j.attempts for j in todo}
                    self._launch(todo)
                    # retry only jobs whose attempt was counted, so a launcher that never starts a job cannot loop us
                    todo = [
                        self.state.job(n) for n in before
                        if self._retry(self.state.job(n), before[n], max_attempts)
                    ]
                    if todo:
                        self.say(f"llem: retrying {len(todo)} failed job(s) (max_attempts={max_attempts})")
            finally:
                session.progress = None

    @staticmethod
    def _retry(job: ManifestJob, attempts_before: int, max_attempts: int) -> bool:
        return (job.status == "failed" and job.retryable and job.attempts > attempts_before
                and job.attempts < max_attempts)  # fmt: skip

    def _add_repetition(self, repetition: int) -> None:
        """Copy repetition 0's jobs as new, pending entries with new job numbers and dirs."""
        manifest = self.state.manifest
        if any(j.repetition == repetition for j in manifest.jobs):
            return
        next_num = max(j.job_num for j in manifest.jobs) + 1
        templates = [j for j in manifest.jobs
                     if j.repetition == 0 and j.status not in ("invalid", "skipped") and not j.retired]  # fmt: skip
        new = []
        for template in templates:
            job = template.model_copy(deep=True)
            job.job_num, job.repetition, job.status = next_num, repetition, "pending"
            job.error = job.started_at = job.completed_at = None
            job.attempts = 0
            job.retryable = True
            job.slurm_job_id = job.node = job.gpus = None
            job.result_path = self._result_path(next_num, job.overrides)
            new.append(job)
            next_num += 1
        self.state.add_jobs(new)

    def _run_daemon(self, daemon: CampaignDaemonConfig) -> None:
        """Repeat the whole campaign on the daemon schedule; the schedule survives restarts."""
        calendar = schedule.Calendar.of(self.settings.schedule, at=daemon.at)
        state = self.state.manifest.schedule or schedule.initial_state(daemon, dt.datetime.now(dt.timezone.utc), calendar)
        self.state.set_fields(schedule=state)
        while schedule.may_start(state):
            repetition = int(state["repetitions_done"])
            _sleep_until(dt.datetime.fromisoformat(state["next_start"]), f"repetition {repetition} starts")
            now = dt.datetime.now(dt.timezone.utc)
            if not schedule.may_start(state, now):  # overslept past the deadline
                break
            self.state.event({"kind": "repetition_started", "repetition": repetition})
            self._add_repetition(repetition)
            self.say(f"llem: daemon repetition {repetition} starting")
            self._run_repetition(repetition)
            state = schedule.after_repetition(state, dt.datetime.now(dt.timezone.utc), calendar)
            self.state.set_fields(schedule=state)
        self.say(f"llem: daemon schedule finished after {state['repetitions_done']} repetition(s)")

    # ------------------------------------------------------------------ ending
    def _interruption(self) -> CampaignInterrupted:
        stop = None if self._guards is None else self._guards.reason  # a guard's stop, else Ctrl-C or SIGTERM
        head = "llem: campaign interrupted; finished jobs are kept." if stop is None else f"{stop.message}."
        return CampaignInterrupted(
            f"{head} Resume by running the same command with hydra.sweep.dir={self.sweep_dir}",
            exit_code=130 if stop is None else stop.exit_code,
        )

    def _interrupted(self) -> None:
        """Jobs left `running` by a Ctrl-C are marked interrupted; the export and the webhook say so.

        Before the state is open (an interrupt while it is created or reconciled) nothing is recorded: the database
        holds the last committed state, which the next run resumes from. A second interrupt while this records
        leaves what is recorded so far; the campaign still ends as interrupted."""
        try:
            if self._state_open and not self.options.dry_run and not self.state.closed:
                running = {j.job_num: {"status": "interrupted", "error": "interrupted by the user",
                                       "completed_at": utc_now()}
                           for j in self.state.manifest.jobs if j.status == "running"}  # fmt: skip
                self.state.update(running)
                self.state.export(force=True)
            self._notify_interrupted()
        except KeyboardInterrupt:
            log.warning("llem: interrupted again while recording the interruption")

    def _notify_interrupted(self) -> None:
        """The webhook's campaign_end with outcome `interrupted`, once, wherever the interrupt landed."""
        if self.options.dry_run or self._end_notified:
            return
        name = self.state.manifest.campaign_name if self.state.loaded else self.campaign_name
        if self.notifier is None:
            self.notifier = notifier_for(self.settings, name)
        if self.notifier is None:
            return
        self._end_notified = True
        counts = self.state.manifest.counts() if self.state.loaded else {}
        self.notifier.campaign_ended(outcome="interrupted", counts=counts, summary_path=None,
                                     manifest_path=self.manifest_path)  # fmt: skip

    def _finish(self) -> CampaignOutcome:
        self.state.export(force=True)
        manifest = self.state.manifest
        counts = manifest.counts()
        collect_results(manifest, self.sweep_dir, self.settings.io)
        summary: Path | None = None
        try:
            from llem.report.summary import write_summary

            summary, _ = write_summary(self.sweep_dir, self.manifest_path)
            self.say(f"llem: summary written to {summary}")
        except ImportError:
            pass
        failed = [j for j in manifest.jobs if j.status in ("failed", "interrupted")]
        if self.notifier is not None:
            self._end_notified = True
            self.notifier.campaign_ended(
                outcome="failed" if failed else "completed", counts=counts, summary_path=summary,
                manifest_path=self.manifest_path,
            )
        text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        self.say(f"llem: campaign '{manifest.campaign_name}' finished: {text}; manifest {self.manifest_path}")
        return CampaignOutcome(self.manifest_path, counts, failed=failed, summary_path=summary, returns=self.returns)


def _freeze_long_lived() -> bool:
    """Keep what exists now (the plan, the state) out of the collector's scans, so the cost of a job does not grow
    with the size of the campaign. Returns whether it froze, so the caller unfreezes when the campaign ends: a
    process that runs campaigns one after another (a notebook, a service) must not keep each one's objects frozen.
    Nothing is frozen when the caller froze objects of its own, which an unfreeze would thaw too."""
    if gc.get_freeze_count():
        return False
    gc.collect()
    gc.freeze()
    return True


def _sleep_until(when: dt.datetime, what: str) -> None:
    while True:
        left = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if left <= 0:
            return
        log.info("llem: %s at %s (in %.0f s)", what, when.astimezone().isoformat(timespec="seconds"), left)
        time.sleep(min(left, 60.0))


def launch_plain(launcher: Any, jobs: Sequence[Sequence[str]], batch_size: int | None) -> list[Sequence[Any]]:
    """Plain cartesian product for non-llem apps (keeps the sweeper usable with any Hydra app)."""
    returns: list[Sequence[Any]] = []
    index = 0
    size = batch_size if batch_size and batch_size > 0 else max(1, len(jobs))
    for start in range(0, len(jobs), size):
        batch = [list(j) for j in jobs[start : start + size]]
        results = launcher.launch(batch, initial_job_idx=index)
        for r in results:
            _ = r.return_value  # re-raise a failed job, as Hydra's basic sweeper does
        index += len(batch)
        returns.append(results)
    return returns
