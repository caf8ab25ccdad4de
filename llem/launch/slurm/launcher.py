"""Submit a launch's groups as SLURM jobs (submitit), wait for them, and collect one JobReturn per job.

Jobs are composed here, on the submitting host (hydra.job.num and hydra.job.id set), grouped, and
pickled to the SLURM jobs. Each job's start and end is reported to the campaign (when one is attached)
as its group reports it, not when the whole launch returns. Before submitting, the launcher re-attaches
to SLURM jobs an earlier, dead orchestrator left running for these jobs (so no job runs twice), and
checks that the partition has the GPUs the groups ask for. Failures come back as FAILED JobReturns,
never as exceptions.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    setup_globals,
)
from omegaconf import DictConfig, OmegaConf

from llem.config.errors import ConfigError
from llem.launch.job_config import JobComposer, numbered
from llem.launch.jobs import Job
from llem.launch.outcome import JobFailure
from llem.launch.slurm.cluster import (
    FINISHED_STATES,
    GONE,
    cancel,
    live_states,
    partition_has_gpus,
    squeue_states,
)
from llem.launch.slurm.container import container_problem
from llem.launch.slurm.groups import (
    Group,
    JobSpec,
    campaign_value,
    describe,
    group_jobs,
)
from llem.launch.slurm.job import (
    GroupJob,
    JobOutcome,
    completed_return,
    failed_return,
    read_outcome,
    read_placement,
    recorded_submissions,
    record_submission,
    result_done,
)
from llem.launch.slurm.options import SlurmOptions, executor_parameters
from llem.launch.slurm.pacing import GroupPacing, HealthPolicy
from llem.launch.slurm.reporting import JobReports

log = logging.getLogger(__name__)

__all__ = ["FINISHED_STATES", "SlurmLaunch", "launch", "live_job_dirs", "squeue_states"]



def _compose_failed(overrides: Sequence[str], job_num: int, error: BaseException) -> JobReturn:
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED,
                     _return_value=JobFailure(f"job {job_num} could not be composed: {error}"))


def live_job_dirs(sweep_dir: Path, run: Callable[..., Any] = subprocess.run) -> set[Path]:
    """Job dirs a SLURM job recorded for them may still be writing (a resumed campaign must leave their temp
    files alone). When SLURM cannot answer, every dir with a recorded SLURM job counts as live."""
    sweep = Path(sweep_dir).absolute()
    dirs: dict[Path, set[str]] = {}
    for num, record in recorded_submissions(str(sweep)).items():
        if record.get("job_dir"):
            dirs.setdefault(Path(record["job_dir"]).absolute(), set()).add(str(record["slurm_job_id"]))
    for placement in sweep.glob("*/.slurm.json"):
        where = read_placement(str(placement.parent)) or {}
        if where.get("slurm_job_id"):
            dirs.setdefault(placement.parent.absolute(), set()).add(str(where["slurm_job_id"]))
    if not dirs:
        return set()
    live = live_states([i for ids in dirs.values() for i in ids], run=run)
    if live is None:
        return set(dirs)
    return {d for d, ids in dirs.items() if ids & set(live)}


class SlurmLaunch:
    """One `launch` call: plan groups, re-attach to live SLURM jobs, submit, wait, collect."""

    def __init__(self, options: SlurmOptions, config: DictConfig, hydra_context: Any, task_function: Any,
                 session: Any = None, executor_factory: Callable[..., Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep, run: Callable[..., Any] = subprocess.run,
                 attach_job: Callable[[str], Any] | None = None, jobs: Sequence[Job] = ()) -> None:
        self.options = options
        self.jobs = {job.num: job for job in jobs}  # the campaign's plan of each job, by number
        self._composer: JobComposer | None = None
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.session = session
        self.reports = JobReports(session)
        self.executor_factory = executor_factory
        self.sleep = sleep
        self.run_cmd = run  # how SLURM's commands (squeue, sinfo, scancel) are run
        self.attach_job = attach_job
        self.sweep_dir = str(Path(str(config.hydra.sweep.dir)).absolute())
        self.attached: list[tuple[Group, Any]] = []
        self._forwarded: set[tuple[str, int]] = set()  # (SLURM job, job num) whose outcome events went on

    # ------------------------------------------------------------------ plan
    def plan(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
             ) -> tuple[list[JobReturn | None], list[Group]]:
        """Compose the jobs; take over live SLURM jobs of an earlier run (`self.attached`); fit the GPU requests
        to the partition; group what is left to submit."""
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        specs: list[JobSpec] = []
        for idx, overrides in enumerate(job_overrides):
            num = initial_job_idx + idx
            log.info("\t#%d : %s", num, " ".join(filter_overrides(list(overrides))))
            try:
                config = self._compose(overrides, num)
            except Exception as error:  # noqa: BLE001 - fails that job only
                returns[idx] = _compose_failed(overrides, num, error)
                self.reports.finished(num, returns[idx], list(overrides))
                continue
            planned = self.jobs.get(num)
            spec = describe(JobSpec(idx, num, list(overrides), config), self.options.route_by,
                            None if planned is None else planned.experiment)
            if planned is not None and tuple(overrides) == planned.overrides:
                spec.experiment = planned.planned_experiment
            spec.period = self._period(num)
            if result_done(spec.job_dir, spec.config_hash):  # finished by an earlier, interrupted launch
                returns[idx] = completed_return(spec)
                where = read_placement(spec.job_dir) or {}
                self.reports.placed(num, where.get("slurm_job_id"), where.get("node"))
                self.reports.finished(num, returns[idx], spec.overrides, spec.key)
                continue
            specs.append(spec)
        self.attached, specs = self._reattach(specs, returns)
        specs = self._fit_partition(specs, returns)
        return returns, group_jobs(specs)

    def _compose(self, overrides: Sequence[str], job_num: int) -> DictConfig:
        """The job's whole Hydra config, as Hydra's `load_sweep_config` gives it, with its number and id:
        assembled from the campaign's composition of it, or composed here for a job no campaign planned."""
        if self._composer is None:
            self._composer = JobComposer(self.hydra_context.config_loader, self.config)
        planned = self.jobs.get(job_num)
        if planned is not None and tuple(overrides) == planned.overrides:
            return self._composer.for_job(planned)
        return numbered(self._composer.compose(overrides), job_num)

    def _period(self, job_num: int) -> tuple[int | None, int | None]:
        """(repetition, cycle) of a job, as the campaign planned it (gaps and health checks follow it)."""
        job = self.jobs.get(job_num)
        return (None, None) if job is None else job.period

    def _reattach(self, specs: list[JobSpec], returns: list[JobReturn | None]
                  ) -> tuple[list[tuple[Group, Any]], list[JobSpec]]:
        """SLURM jobs an earlier run submitted for these jobs and that still run: wait for them instead of
        submitting the jobs again; one whose submitit files are gone is cancelled first."""
        submitted = recorded_submissions(self.sweep_dir)
        recorded: dict[int, set[str]] = {}
        for spec in specs:
            ids = {str(i) for i in ((read_placement(spec.job_dir) or {}).get("slurm_job_id"),
                                    submitted.get(spec.job_num, {}).get("slurm_job_id")) if i}
            if ids:
                recorded[spec.job_num] = ids
        if not recorded:
            return [], specs
        live = live_states([i for ids in recorded.values() for i in ids], run=self.run_cmd)
        if live is None:  # starting them again could run them twice: not now
            rest = []
            for spec in specs:
                if spec.job_num not in recorded:
                    rest.append(spec)
                    continue
                self._fail(spec, returns, JobFailure(
                    f"SLURM did not answer whether SLURM job(s) {sorted(recorded[spec.job_num])}, started for job "
                    f"{spec.job_num} by an earlier run, still run; it was not submitted again (no job runs twice)"))
            return [], rest
        members: dict[str, list[JobSpec]] = {}
        rest = []
        for spec in specs:
            running = sorted(recorded.get(spec.job_num, set()) & set(live), key=lambda i: (len(i), i))  # newest last
            if running:
                members.setdefault(running[-1], []).append(spec)
            else:
                rest.append(spec)
        attached: list[tuple[Group, Any]] = []
        for slurm_id, jobs in members.items():
            nums = [s.job_num for s in jobs]
            handle = self._attach(slurm_id)
            if handle is None:
                if cancel(slurm_id, run=self.run_cmd, sleep=self.sleep):
                    self.reports.say(f"llem: cancelled SLURM job {slurm_id} of an earlier run (its submitit files are "
                                     f"gone); job(s) {nums} are submitted again")
                    rest.extend(jobs)
                else:
                    for spec in jobs:
                        self._fail(spec, returns, JobFailure(
                            f"SLURM job {slurm_id} of an earlier run still runs job {spec.job_num} and could not be "
                            "cancelled; it was not submitted again (no job runs twice)"))
                continue
            self.reports.say(f"llem: SLURM job {slurm_id} of an earlier run still runs ({live[slurm_id]}) job(s) "
                             f"{nums}; waiting for it instead of submitting them again")
            for spec in jobs:
                self.reports.placed(spec.job_num, slurm_id)
            attached.append((Group(jobs[0].key, jobs[0].model, jobs), handle))
        rest.sort(key=lambda s: s.index)
        return attached, rest

    def _attach(self, slurm_id: str) -> Any:
        """A handle on an already submitted SLURM job (its result comes back through submitit's folder)."""
        if self.attach_job is not None:
            return self.attach_job(slurm_id)
        folder = Path(self.options.folder)
        if not (folder / f"{slurm_id}_submitted.pkl").is_file():
            return None
        import submitit

        return submitit.SlurmJob(folder=folder, job_id=slurm_id)

    def _fit_partition(self, specs: list[JobSpec], returns: list[JobReturn | None]) -> list[JobSpec]:
        """Before anything is queued: on a partition without GPUs, jobs whose GPU comes from
        `backend.device=auto` run on CPU (with a note); jobs that need GPUs fail once, with the fix."""
        explicit = self.options.gpus_per_task
        if explicit == 0 or not any((explicit or s.gpus) > 0 for s in specs):
            return specs
        answer = partition_has_gpus(self.options.partition, run=self.run_cmd)
        if answer is None or answer[1]:  # GPUs there, or sinfo cannot say: submit as asked
            return specs
        partition = answer[0]
        keep: list[JobSpec] = []
        on_cpu: list[int] = []
        for spec in specs:
            need = explicit or spec.gpus
            if need <= 0:
                keep.append(spec)
            elif spec.gpu_auto and explicit is None:
                spec.gpus = 0
                on_cpu.append(spec.job_num)
                keep.append(spec)
            else:
                self._fail(spec, returns, ConfigError(self._no_gpu_message(spec, need, partition)))
        if on_cpu:
            self.reports.say(f"llem: SLURM partition '{partition}' has no GPUs: job(s) {on_cpu} "
                             "(backend.device=auto) run on CPU there")
            self.reports.event(kind="slurm_no_gpus", partition=partition, jobs_on_cpu=on_cpu)
        return keep

    def _no_gpu_message(self, spec: JobSpec, need: int, partition: str) -> str:
        if self.options.gpus_per_task:
            why, fix = f"hydra.launcher.gpus_per_task={need}", "hydra.launcher.gpus_per_task=0"
        else:
            why, fix = f"needs {need} GPU(s)", None
            if OmegaConf.select(spec.config, "backend.name", default=None) == "pytorch":
                fix = "backend.device=cpu"
        fixes = " or ".join(f for f in (fix, "a GPU partition (hydra.launcher.partition=<name>)") if f)
        return (f"job {spec.job_num} ({' '.join(filter_overrides(spec.overrides)) or 'defaults'}) {why}, but SLURM "
                f"partition '{partition}' has no GPUs (sinfo shows no gpu gres); nothing was submitted for it. "
                f"Fix: {fixes}")

    def group_job(self, group: Group) -> GroupJob:
        from hydra.core.singleton import Singleton

        from llem.launch import protocol
        from llem.launch.slurm.container import image_for

        first = group.jobs[0].config
        setting = self._campaign_setting
        prompts = int(setting(first, "execution.warmup_prompts", 0) or 0)
        warmup = ({"prompts": prompts, "timeout_s": setting(first, "execution.warmup_timeout_seconds", 300.0)}
                  if prompts > 0 else None)
        container = self.options.in_container
        health = None
        if bool(setting(first, "health_check.enabled", False)):
            health = HealthPolicy(
                interval_experiments=int(setting(first, "health_check.interval_experiments", 0) or 0),
                gpu_memory_threshold_pct=float(setting(first, "health_check.gpu_memory_threshold_pct", 90.0)),
                restart_on_failure=bool(setting(first, "health_check.restart_on_failure", True)),
                max_restarts=int(setting(first, "health_check.max_restarts", 3)),
            )
        timeout = setting(first, "execution.experiment_timeout_seconds", None)
        pacing = GroupPacing(
            config_gap_s=float(setting(first, "execution.config_gap_seconds", 0.0) or 0.0),
            cycle_gap_s=float(setting(first, "execution.cycle_gap_seconds", 0.0) or 0.0),
            timeout_s=float(timeout) if timeout else None,
            health=health,
        )
        return GroupJob(
            group.jobs, self.task_function, self.hydra_context.callbacks,
            protocol.pack_singleton_state(Singleton.get_state()),
            sweep_dir=self.sweep_dir, env={str(k): str(v) for k, v in self.options.env.items()},
            passthrough=list(self.options.env_passthrough), container=container,
            image=image_for(container, group.key) if container is not None else None,
            gpus=self._gpus(group), warmup=warmup, pacing=pacing,
            cold_start=bool(setting(first, "cold_start.force_cold_start", False)
                            or setting(first, "cold_start.restart_container", False)),
        )

    def _gpus(self, group: Group) -> int:
        """GPUs the SLURM job asks for (and a container is given)."""
        explicit = self.options.gpus_per_task
        return int(explicit) if explicit is not None else group.gpus

    def _campaign_setting(self, config: DictConfig, key: str, default: Any) -> Any:
        """A campaign setting: the running campaign's (its command line's `campaign.*` overrides included, which
        jobs never carry), else the composed job's `campaign` section."""
        settings = getattr(self.session, "settings", None)
        if settings is None:
            return campaign_value(config, key, default)
        value: Any = settings
        for part in key.split("."):
            value = getattr(value, part, None)
        return default if value is None else value

    def _executor(self) -> Any:
        if self.executor_factory is not None:
            return self.executor_factory()
        import submitit

        return submitit.SlurmExecutor(folder=self.options.folder, max_num_timeout=self.options.max_num_timeout,
                                      python=self.options.python)

    # ------------------------------------------------------------------ run
    def run(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        returns, groups = self.plan(job_overrides, initial_job_idx)
        executor = self._executor() if groups else None
        waiting: list[tuple[Group, Any]] = list(self.attached)
        try:
            for group in groups:
                container = self.options.in_container
                problem = None if container is None else container_problem(container, group.key)
                if problem is not None:  # a mistake in the launcher's options: a retry cannot change it
                    self._fail_group(group, returns, ConfigError(problem))
                    continue
                try:
                    executor.update_parameters(**executor_parameters(self.options, group.gpus))
                    job = executor.submit(self.group_job(group))
                except Exception as error:  # noqa: BLE001 - sbatch refused (partition, gres, limits), ...
                    # the same options would be refused again: failed once, never retried
                    self._fail_group(group, returns, ConfigError(
                        f"SLURM refused to queue job(s) {[s.job_num for s in group.jobs]} ({group.name}): "
                        f"{str(error).strip()}; fix the hydra.launcher options (partition, gpus_per_task, "
                        "additional_parameters, ...) and run again"))
                    continue
                slurm_id = str(job.job_id)
                log.info("llem: SLURM job %s runs %d job(s) of %s (gpus=%d)", slurm_id, len(group.jobs),
                         group.name, group.gpus)
                try:  # kept by the launcher itself: a resumed run finds this SLURM job even if its state did not
                    record_submission(self.sweep_dir, slurm_id, {s.job_num: s.job_dir for s in group.jobs})
                except OSError as error:
                    log.warning("llem: could not record SLURM job %s: %s", slurm_id, error)
                for spec in group.jobs:
                    self.reports.placed(spec.job_num, slurm_id)
                waiting.append((group, job))
            self._wait(waiting, returns)
        except KeyboardInterrupt:
            for _, job in waiting:
                try:
                    job.cancel(check=False)
                except Exception as error:  # noqa: BLE001 - already gone
                    log.debug("llem: could not cancel SLURM job %s: %s", job.job_id, error)
            raise
        out: list[JobReturn] = []
        for i, ret in enumerate(returns):
            num = initial_job_idx + i
            if ret is None:
                ret = _compose_failed(list(job_overrides[i]), num, RuntimeError("no outcome"))
            self.reports.finished(num, ret, list(job_overrides[i]))  # no-op for every job already reported
            out.append(ret)
        return out

    def _fail(self, spec: JobSpec, returns: list[JobReturn | None], error: BaseException) -> None:
        """A job ends without a SLURM job of its own (or its SLURM job ended without its outcome)."""
        ret = completed_return(spec) if result_done(spec.job_dir, spec.config_hash) else failed_return(spec, error)
        returns[spec.index] = ret
        where = read_placement(spec.job_dir)
        if where:
            self.reports.placed(spec.job_num, where.get("slurm_job_id"), where.get("node"))
        self.reports.finished(spec.job_num, ret, spec.overrides, spec.key)

    def _fail_group(self, group: Group, returns: list[JobReturn | None], error: BaseException) -> None:
        for spec in group.jobs:
            if self.reports.has_finished(spec.job_num) and returns[spec.index] is not None:
                continue  # its group reported it before it ended
            self._fail(spec, returns, error)

    def _take(self, spec: JobSpec, outcome: JobOutcome, slurm_id: str, returns: list[JobReturn | None]) -> None:
        """One job's outcome, as its group reported it: placed, events, finished."""
        returns[spec.index] = outcome.job_return
        self.reports.placed(spec.job_num, outcome.slurm_job_id, outcome.node)
        if (slurm_id, spec.job_num) not in self._forwarded:
            self._forwarded.add((slurm_id, spec.job_num))
            for event in outcome.events:
                self.reports.event(**event)
        self.reports.started(spec.job_num, spec.overrides, spec.key, outcome.slurm_job_id, outcome.node)
        self.reports.finished(spec.job_num, outcome.job_return, spec.overrides, spec.key)

    def _collect(self, group: Group, job: Any, returns: list[JobReturn | None]) -> None:
        slurm_id = str(job.job_id)
        try:
            outcomes: list[JobOutcome] = job.result()
        except Exception as error:  # noqa: BLE001 - the group itself failed (import error on the node, ...)
            self._fail_group(group, returns, JobFailure(f"SLURM job {slurm_id} failed: {error}"))
            return
        by_num = {o.job_num: o for o in outcomes}
        for spec in group.jobs:
            outcome = by_num.get(spec.job_num)
            if outcome is None:
                self._fail(spec, returns, JobFailure(f"SLURM job {slurm_id} returned nothing for job {spec.job_num}"))
                continue
            self._take(spec, outcome, slurm_id, returns)

    def _progress(self, group: Group, slurm_id: str, returns: list[JobReturn | None]) -> None:
        """What the group has reported so far: jobs begun (their placement) and jobs ended (their outcome)."""
        for spec in group.jobs:
            if self.reports.has_finished(spec.job_num):
                continue
            outcome = read_outcome(self.sweep_dir, slurm_id, spec.job_num)
            if outcome is not None:
                self._take(spec, outcome, slurm_id, returns)
                continue
            where = read_placement(spec.job_dir)
            if where and where.get("node") and where.get("slurm_job_id") == slurm_id:
                self.reports.placed(spec.job_num, slurm_id, where.get("node"))
                self.reports.started(spec.job_num, spec.overrides, spec.key, slurm_id, where.get("node"))

    def _wait(self, submitted: list[tuple[Group, Any]], returns: list[JobReturn | None]) -> None:
        pending = list(submitted)
        ended_at: dict[str, float] = {}
        grace = max(3 * self.options.poll_interval_s, 15.0)  # a result file may lag the job's end (NFS)
        while pending:
            states = squeue_states([str(job.job_id) for _, job in pending], run=self.run_cmd)
            still: list[tuple[Group, Any]] = []
            for group, job in pending:
                job_id = str(job.job_id)
                self._progress(group, job_id, returns)
                if Path(job.paths.result_pickle).exists():
                    self._collect(group, job, returns)
                    continue
                state = None if states is None else states.get(job_id, GONE)
                if state is not None and (state in FINISHED_STATES or state == GONE):
                    first = ended_at.setdefault(job_id, time.monotonic())
                    if time.monotonic() - first >= grace:
                        self._fail_group(group, returns, JobFailure(self._ended_message(job, state)))
                        continue
                else:
                    ended_at.pop(job_id, None)
                still.append((group, job))
            pending = still
            if pending:
                self.sleep(self.options.poll_interval_s)

    @staticmethod
    def _ended_message(job: Any, state: str) -> str:
        what = "is no longer known to SLURM" if state == GONE else f"ended ({state})"
        tail = ""
        try:
            err = job.stderr() or ""
            lines = [line for line in err.strip().splitlines() if line.strip()][-8:]
            if lines:
                tail = "; last lines of its log:\n" + "\n".join(lines)
        except Exception as error:  # noqa: BLE001 - no log yet
            log.debug("llem: no log for SLURM job %s: %s", job.job_id, error)
        return f"SLURM job {job.job_id} {what} before this job finished{tail}"


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
           jobs: Sequence[Job] = ()) -> list[JobReturn]:
    """`Launcher.launch` of the llem_slurm plugin; `jobs`: the campaign's plan of these jobs, when it has one."""
    setup_globals()
    config: DictConfig = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info("llem slurm launcher: %d job(s)", len(job_overrides))
    run = SlurmLaunch(launcher.options, config, launcher.hydra_context, launcher.task_function,
                      session=launcher.session, jobs=jobs)
    return run.run(job_overrides, initial_job_idx)
