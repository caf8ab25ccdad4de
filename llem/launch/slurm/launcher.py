"""Submit a launch's groups as SLURM jobs (submitit), wait for them, and collect one JobReturn per job.

Jobs are composed here, on the submitting host (hydra.job.num and hydra.job.id set), grouped, and
pickled to the SLURM jobs. The SLURM job ids and nodes are reported to the campaign (when one is
attached) as soon as they are known. Failures come back as FAILED JobReturns, never as exceptions.
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
from omegaconf import DictConfig

from llem.config.errors import ConfigError
from llem.launch.outcome import JobFailure
from llem.launch.runner import compose_job
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
    read_placement,
    result_done,
)
from llem.launch.slurm.options import SlurmOptions, executor_parameters

log = logging.getLogger(__name__)

# SLURM states after which a job will not run again (a requeued job shows REQUEUED, then PENDING).
FINISHED_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
})


class Placements:
    """Tells the campaign where each job runs, once per new (SLURM job, node)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.known: dict[int, tuple[str | None, str | None]] = {}

    def report(self, job_num: int, slurm_job_id: str | None, node: str | None = None) -> None:
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


def squeue_states(job_ids: Sequence[str], run: Callable[..., Any] = subprocess.run) -> dict[str, str] | None:
    """SLURM state per job id (absent: no longer known to SLURM); None when squeue cannot answer."""
    if not job_ids:
        return {}
    try:
        proc = run(["squeue", "-h", "--states=all", "-o", "%i|%T", "-j", ",".join(job_ids)],
                   capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        # squeue rejects a list whose ids are all purged: then none is known
        return {} if "Invalid job id" in (proc.stderr or "") else None
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state.split()[0] if state else ""
    return states


def _compose_failed(overrides: Sequence[str], job_num: int, error: BaseException) -> JobReturn:
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED,
                     _return_value=JobFailure(f"job {job_num} could not be composed: {error}"))


class SlurmLaunch:
    """One `launch` call: plan groups, submit, wait, collect."""

    def __init__(self, options: SlurmOptions, config: DictConfig, hydra_context: Any, task_function: Any,
                 session: Any = None, executor_factory: Callable[..., Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.session = session
        self.placements = Placements(session)
        self.executor_factory = executor_factory
        self.sleep = sleep
        self.sweep_dir = str(Path(str(config.hydra.sweep.dir)).absolute())

    # ------------------------------------------------------------------ plan
    def plan(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
             ) -> tuple[list[JobReturn | None], list[Group]]:
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        specs: list[JobSpec] = []
        for idx, overrides in enumerate(job_overrides):
            num = initial_job_idx + idx
            log.info("\t#%d : %s", num, " ".join(filter_overrides(list(overrides))))
            try:
                config = compose_job(self.hydra_context, self.config, overrides, num)
            except Exception as error:  # noqa: BLE001 - fails that job only
                returns[idx] = _compose_failed(overrides, num, error)
                continue
            spec = describe(JobSpec(idx, num, list(overrides), config), self.options.route_by)
            if result_done(spec.job_dir, spec.config_hash):  # finished by an earlier, interrupted launch
                returns[idx] = completed_return(spec)
                where = read_placement(spec.job_dir) or {}
                self.placements.report(num, where.get("slurm_job_id"), where.get("node"))
                continue
            specs.append(spec)
        return returns, group_jobs(specs)

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
        return GroupJob(
            group.jobs, self.task_function, self.hydra_context.callbacks,
            protocol.pack_singleton_state(Singleton.get_state()),
            sweep_dir=self.sweep_dir, env={str(k): str(v) for k, v in self.options.env.items()},
            passthrough=list(self.options.env_passthrough), container=container,
            image=image_for(container, group.key) if container is not None else None,
            gpus=group.gpus, warmup=warmup,
            gap_s=float(setting(first, "execution.config_gap_seconds", 0.0) or 0.0),
            cold_start=bool(setting(first, "cold_start.force_cold_start", False)
                            or setting(first, "cold_start.restart_container", False)),
        )

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
        submitted: list[tuple[Group, Any]] = []
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
                except Exception as error:  # noqa: BLE001 - sbatch refused (partition, limits), ...
                    self._fail_group(group, returns, JobFailure(f"could not submit to SLURM: {error}"))
                    continue
                log.info("llem: SLURM job %s runs %d job(s) of %s (gpus=%d)", job.job_id, len(group.jobs),
                         group.name, group.gpus)
                for spec in group.jobs:
                    self.placements.report(spec.job_num, str(job.job_id))
                submitted.append((group, job))
            self._wait(submitted, returns)
        except KeyboardInterrupt:
            for _, job in submitted:
                try:
                    job.cancel(check=False)
                except Exception as error:  # noqa: BLE001 - already gone
                    log.debug("llem: could not cancel SLURM job %s: %s", job.job_id, error)
            raise
        return [r if r is not None else _compose_failed([], initial_job_idx + i, RuntimeError("no outcome"))
                for i, r in enumerate(returns)]

    def _fail_group(self, group: Group, returns: list[JobReturn | None], error: BaseException) -> None:
        from llem.launch.slurm.job import failed_return

        for spec in group.jobs:
            ret = completed_return(spec) if result_done(spec.job_dir, spec.config_hash) else failed_return(spec, error)
            returns[spec.index] = ret
            where = read_placement(spec.job_dir)
            if where:
                self.placements.report(spec.job_num, where.get("slurm_job_id"), where.get("node"))

    def _collect(self, group: Group, job: Any, returns: list[JobReturn | None]) -> None:
        try:
            outcomes: list[JobOutcome] = job.result()
        except Exception as error:  # noqa: BLE001 - the group itself failed (import error on the node, ...)
            self._fail_group(group, returns, JobFailure(f"SLURM job {job.job_id} failed: {error}"))
            return
        by_num = {o.job_num: o for o in outcomes}
        for spec in group.jobs:
            outcome = by_num.get(spec.job_num)
            if outcome is None:
                self._fail_group(Group(group.key, group.model, [spec]), returns,
                                 JobFailure(f"SLURM job {job.job_id} returned nothing for job {spec.job_num}"))
                continue
            returns[spec.index] = outcome.job_return
            self.placements.report(spec.job_num, outcome.slurm_job_id, outcome.node)

    def _wait(self, submitted: list[tuple[Group, Any]], returns: list[JobReturn | None]) -> None:
        pending = list(submitted)
        ended_at: dict[str, float] = {}
        grace = max(3 * self.options.poll_interval_s, 15.0)  # a result file may lag the job's end (NFS)
        while pending:
            states = squeue_states([str(job.job_id) for _, job in pending])
            still: list[tuple[Group, Any]] = []
            for group, job in pending:
                job_id = str(job.job_id)
                self._report_running(group)
                if Path(job.paths.result_pickle).exists():
                    self._collect(group, job, returns)
                    continue
                state = None if states is None else states.get(job_id, "GONE")
                if state is not None and (state in FINISHED_STATES or state == "GONE"):
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

    def _report_running(self, group: Group) -> None:
        for spec in group.jobs:
            where = read_placement(spec.job_dir)
            if where and where.get("node"):
                self.placements.report(spec.job_num, where.get("slurm_job_id"), where.get("node"))

    @staticmethod
    def _ended_message(job: Any, state: str) -> str:
        what = "is no longer known to SLURM" if state == "GONE" else f"ended ({state})"
        tail = ""
        try:
            err = job.stderr() or ""
            lines = [line for line in err.strip().splitlines() if line.strip()][-8:]
            if lines:
                tail = "; last lines of its log:\n" + "\n".join(lines)
        except Exception as error:  # noqa: BLE001 - no log yet
            log.debug("llem: no log for SLURM job %s: %s", job.job_id, error)
        return f"SLURM job {job.job_id} {what} before this job finished{tail}"


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """`Launcher.launch` of the llem_slurm plugin."""
    setup_globals()
    config: DictConfig = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info("llem slurm launcher: %d job(s)", len(job_overrides))
    run = SlurmLaunch(launcher.options, config, launcher.hydra_context, launcher.task_function,
                      session=launcher.session)
    return run.run(job_overrides, initial_job_idx)
