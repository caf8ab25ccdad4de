"""Run Hydra jobs on warm workers: routing, gaps, health checks, restarts, cold starts, timeouts.

Shared by the local and the container launcher; only how a worker is created differs. Each job
comes as a planned value (llem.launch.jobs.Job) with its composed config; its start and end go to
the attached reporter (llem.launch.reporting.JobReporter), never to a file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from llem.launch import protocol
from llem.launch.handle import WorkerDied, WorkerHandle, WorkerTimeout, WorkerUnkillable
from llem.launch.jobs import Job
from llem.launch.outcome import JobFailure
from llem.launch.reporting import JobReporter, StandaloneReporter

if TYPE_CHECKING:
    from llem.config import CampaignSettings

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 30.0


@dataclass
class RunnerOptions:
    route_by: str = "backend.name"
    timeout_s: float | None = None
    # Gaps between consecutive jobs of the same worker (GPU set), not of the whole launcher: for parallel workers.
    gaps_per_worker: bool = False


@dataclass
class _KeyState:
    worker: WorkerHandle | None = None
    experiments_since_check: int = 0
    last_checked_period: tuple[int | None, int | None] | None = None
    warmed: bool = False
    disabled_reason: str | None = None
    ran_any: bool = False  # gaps, when kept per worker
    previous_period: tuple[int | None, int | None] | None = None


class CampaignRunner:
    """Keeps the workers of one launcher and runs jobs on them."""

    def __init__(
        self,
        make_worker: Callable[[str], WorkerHandle],
        options: RunnerOptions,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.make_worker = make_worker
        self.options = options
        self.reporter: JobReporter | None = None
        self.keys: dict[str, _KeyState] = {}
        self.restarts = 0
        # job threads run side by side: checking the restart budget and spending it is one step
        self._budget = threading.Lock()
        self._stopped = threading.Event()
        # gaps are slept here; by default a stop ends them at once (a job thread may be in one on Ctrl-C)
        self.sleep = sleep if sleep is not None else self._stopped.wait
        self._previous_cycle: tuple[int | None, int | None] | None = None
        self._ran_any = False

    @property
    def stopping(self) -> bool:
        """Workers are being stopped: none is started or restarted, and no job starts (a job thread may ask)."""
        return self._stopped.is_set()

    # ---------------------------------------------------------------- reporting
    def attach(self, reporter: JobReporter) -> None:
        """Where every job's lifecycle is reported (the campaign's session, when a campaign runs the jobs)."""
        self.reporter = reporter

    @property
    def settings(self) -> CampaignSettings | None:
        return None if self.reporter is None else self.reporter.settings

    def _reporter_for(self, config: DictConfig | None) -> JobReporter:
        """Without a campaign, a reporter of the launcher's own, named by the settings or the Hydra job."""
        if self.reporter is None:
            from llem.composed import settings_of

            settings = None if config is None else settings_of(config)
            name = (settings.campaign_name if settings else None) or (
                str(config.hydra.job.name) if config is not None else "campaign")
            self.reporter = StandaloneReporter.for_campaign(settings, name)
        return self.reporter

    def _event(self, **event: Any) -> None:
        if self.reporter is not None:
            self.reporter.event(**event)

    # ---------------------------------------------------------------- workers
    def _state(self, key: str) -> _KeyState:
        return self.keys.setdefault(key, _KeyState())

    def _ensure_worker(self, key: str) -> WorkerHandle:
        state = self._state(key)
        if self.stopping:
            raise WorkerDied("the launcher is stopping")
        if state.worker is None:
            try:
                state.worker = self.make_worker(key)
            except Exception as error:  # noqa: BLE001 - e.g. no image for this key: fail its jobs, not the campaign
                raise WorkerDied(f"cannot create a worker for '{key}': {error}") from None
        if not state.worker.running:
            state.worker.start() if state.worker.starts == 0 else state.worker.restart()
            state.warmed = False
            self._unless_stopped(state.worker)
        return state.worker

    def _unless_stopped(self, worker: WorkerHandle) -> None:
        """A worker (re)started while `stop_all` ran would outlive it: kill it."""
        if self.stopping:
            try:
                worker.kill()
            except WorkerUnkillable as error:
                log.warning("llem: %s", error)
            raise WorkerDied("the launcher is stopping")

    def _disable(self, key: str, reason: str, *, kill: bool = False) -> None:
        """No more jobs for this key's worker; killed first if asked (a kill that fails is said in the reason)."""
        state = self._state(key)
        if kill and state.worker is not None:
            try:
                state.worker.kill()
            except WorkerUnkillable as error:
                reason = f"{reason}; {error}"
        state.disabled_reason = reason
        self._event(kind="worker_disabled", key=key, reason=reason)

    def _max_restarts(self) -> int:
        s = self.settings
        return s.health_check.max_restarts if s is not None else 3

    def _restart(self, key: str, reason: str) -> bool:
        """Restart the key's worker if the campaign's restart budget allows; else disable the key."""
        state = self._state(key)
        if self.stopping:
            state.disabled_reason = f"worker '{key}' is unusable ({reason}) and the launcher is stopping"
            return False
        settings = self.settings
        allowed = settings is None or settings.health_check.restart_on_failure
        with self._budget:
            limit = self._max_restarts()
            spent = self.restarts >= limit
            if allowed and not spent and state.worker is not None:
                self.restarts += 1
                restarts = self.restarts
        if not allowed or spent:
            why = "restarts are disabled" if not allowed else f"max_restarts ({limit}) reached"
            self._disable(key, f"worker '{key}' is unusable ({reason}) and {why}", kill=True)
            return False
        if state.worker is None:
            self._disable(key, f"worker '{key}' is unusable: {reason}")
            return False
        self._event(kind="worker_restart", key=key, reason=reason, restarts=restarts)
        try:
            state.worker.restart()
            self._unless_stopped(state.worker)
        except Exception as error:  # noqa: BLE001 - engine errors, stuck processes, missing interpreters
            self._disable(key, f"worker '{key}' could not be restarted: {error}")
            return False
        state.warmed = False
        state.experiments_since_check = 0
        return True

    def stop_all(self) -> None:
        self._stopped.set()
        for state in list(self.keys.values()):  # job threads may still add keys
            if state.worker is not None:
                try:
                    state.worker.stop()
                except Exception as error:  # noqa: BLE001 - keep stopping the others
                    log.warning("llem: could not stop worker: %s", error)

    # ---------------------------------------------------------------- between jobs
    def _gap(self, job: Job, key: str) -> None:
        """Sleep the config gap before a job, or the cycle gap when its (repetition, cycle) changes; kept for the
        whole launcher, or per worker when workers run side by side (each GPU set keeps its own pace)."""
        settings = self.settings
        reporter = self.reporter
        period = job.period  # (repetition, cycle): gaps follow it, also across repetitions
        holder = self._state(key) if self.options.gaps_per_worker else None
        ran_any = holder.ran_any if holder is not None else self._ran_any
        previous = holder.previous_period if holder is not None else self._previous_cycle
        if settings is not None and reporter is not None and ran_any:
            new_cycle = period[1] is not None and previous is not None and period != previous
            seconds = settings.execution.cycle_gap_seconds if new_cycle else settings.execution.config_gap_seconds
            if seconds > 0:
                where = f" on {key}" if holder is not None else ""
                reporter.say(f"waiting {seconds:g} s ({'cycle' if new_cycle else 'config'} gap{where})")
                reporter.gap(seconds, before_job=job.num, kind="cycle" if new_cycle else "config",
                             where=key if holder is not None else None)
                self.sleep(seconds)
        if holder is not None:
            holder.previous_period = period
        else:
            self._previous_cycle = period

    def _health_due(self, key: str, job: Job) -> bool:
        settings = self.settings
        if settings is None or not settings.health_check.enabled:
            return False
        state = self._state(key)
        interval = settings.health_check.interval_experiments
        if interval > 0:
            return state.experiments_since_check >= interval
        return state.last_checked_period != job.period

    def _health_check(self, key: str, job: Job) -> None:
        settings = self.settings
        assert settings is not None
        state = self._state(key)
        threshold = settings.health_check.gpu_memory_threshold_pct
        try:
            worker = self._ensure_worker(key)
            reply = worker.request({"op": protocol.OP_HEALTH}, timeout=HEALTH_TIMEOUT_S)
            over = {
                dev: info["used_pct"]
                for dev, info in reply.get("devices", {}).items()
                if info.get("used_pct") is not None and info["used_pct"] > threshold
            }
            problem = (
                ", ".join(f"{dev} at {pct:.1f}% memory > {threshold:g}%" for dev, pct in over.items()) if over else None
            )
            self._event(
                kind="health_check", key=key, job_num=job.num, healthy=problem is None,
                devices={d: i.get("used_pct") for d, i in reply.get("devices", {}).items()},
                note=reply.get("unavailable_reason"),
            )
        except Exception as error:  # noqa: BLE001 - the worker could not start or answer
            problem = f"no answer to the health check ({error})"
            self._event(kind="health_check", key=key, job_num=job.num, healthy=False, reason=problem)
        state.experiments_since_check = 0
        state.last_checked_period = job.period
        if problem is not None:
            self._restart(key, problem)

    # ---------------------------------------------------------------- one job
    def _failed(self, config: DictConfig, overrides: Sequence[str], error: BaseException) -> JobReturn:
        task_cfg = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
        hydra_cfg = OmegaConf.create({"hydra": config.hydra})
        ret = JobReturn(
            overrides=list(overrides),
            cfg=task_cfg,
            hydra_cfg=hydra_cfg,
            working_dir=str(Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir)),
            task_name=str(config.hydra.job.name),
            status=JobStatus.FAILED,
            _return_value=error,
        )
        return ret

    def _timeout(self) -> float | None:
        settings = self.settings
        if settings is not None and settings.execution.experiment_timeout_seconds:
            return settings.execution.experiment_timeout_seconds
        return self.options.timeout_s

    def run_job(
        self,
        job: Job,
        config: DictConfig,
        task_function: Any,
        hydra_context: Any,
        while_waiting: Callable[[], None] | None = None,
        *,
        key: str | None = None,
        placement: dict[str, Any] | None = None,
    ) -> JobReturn:
        """Run one planned job, composed as `config`, on its worker. `while_waiting` runs once the job is dispatched.

        `key` names the worker (default: the value at `route_by`); `placement` (GPUs, concurrency) goes
        into the job's result.
        """
        job_num, overrides = job.num, job.overrides
        reporter = self._reporter_for(config)
        key = key or self.route_key(config)
        state = self._state(key)
        if state.disabled_reason is None:  # a disabled key's jobs fail at once, without a gap
            self._gap(job, key)
            if self._health_due(key, job):
                self._health_check(key, job)
        if self.stopping:  # stopped during the gap: the job never starts (the launcher records it interrupted)
            return self._failed(config, overrides, JobFailure("the launcher is stopping"))
        # every hand-over counts as an attempt, even one the launcher fails itself
        reporter.started(job_num, key=key, label=" ".join(filter_overrides(list(overrides))))
        if state.disabled_reason is not None:
            return self._finish(job_num, key, self._failed(config, overrides, JobFailure(state.disabled_reason)))
        settings = self.settings
        try:
            worker = self._ensure_worker(key)
            if settings is not None and settings.cold_start.restart_container and worker.jobs_run > 0:
                self._event(kind="cold_start_restart", key=key, job_num=job_num)
                worker.restart()
                state.warmed = False
            elif settings is not None and settings.cold_start.force_cold_start and worker.jobs_run > 0:
                worker.request({"op": protocol.OP_UNLOAD}, timeout=HEALTH_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - the worker could not start or be reset
            if not self._restart(key, str(error)):
                return self._finish(job_num, key, self._failed(config, overrides, JobFailure(str(state.disabled_reason))))
            try:
                worker = self._ensure_worker(key)
            except WorkerDied as died:
                return self._finish(job_num, key, self._failed(config, overrides, JobFailure(str(died))))

        try:
            extra = self.before_job(key, worker, job, config)
        except Exception as error:  # noqa: BLE001 - e.g. GPU settings the host cannot apply: fails this job only
            return self._finish(job_num, key, self._failed(config, overrides, JobFailure(f"job {job_num}: {error}")))
        message: dict[str, Any] = {"op": protocol.OP_RUN, "config": protocol.pack(config), **extra}
        if job.planned_experiment is not None:  # validated by the plan, from the config this job was assembled from
            message["experiment"] = protocol.pack(job.planned_experiment)
        if not worker.context_sent:
            message["task_function"] = protocol.pack(task_function)
            # a job needs the callbacks, not the host's config loader (which may name host-only plugins)
            message["hydra_context"] = protocol.pack(HydraContext(config_loader=None, callbacks=hydra_context.callbacks))
        if placement is not None:
            message["placement"] = placement
        if settings is not None and not state.warmed:
            message["campaign_warmup"] = {
                "prompts": settings.execution.warmup_prompts,
                "timeout_s": settings.execution.warmup_timeout_seconds,
            }
        timeout = self._timeout()
        try:
            reply = worker.request(message, timeout=timeout, while_waiting=while_waiting)
            worker.context_sent = True
            worker.jobs_run += 1
            try:
                ret: JobReturn = protocol.unpack(reply["job_return"])
            except Exception as error:  # noqa: BLE001 - a result this host cannot unpickle
                ret = self._failed(config, overrides, JobFailure(f"job {job_num}: unreadable job return: {error}"))
            state.warmed = state.warmed or ret.status == JobStatus.COMPLETED
        except WorkerTimeout:
            try:
                worker.kill()
            except WorkerUnkillable as unkillable:  # it may still hold its GPUs: never restarted, the campaign goes on
                self._disable(key, f"worker '{key}' is unusable: {unkillable}")
                error = JobFailure(f"job {job_num} timed out after {timeout:g} s on worker '{key}', and {unkillable}")
            else:
                error = JobFailure(f"job {job_num} timed out after {timeout:g} s on worker '{key}'; the worker was killed")
                self._restart(key, "job timeout")
            ret = self._failed(config, overrides, error)
        except WorkerDied as died:
            ret = self._failed(config, overrides, JobFailure(f"job {job_num}: {died}"))
            self._restart(key, "worker died during a job")
        except RuntimeError as error:  # the worker answered, but could not run the job
            ret = self._failed(config, overrides, JobFailure(f"job {job_num}: {error}"))
        state.experiments_since_check += 1
        state.ran_any = self._ran_any = True
        return self._finish(job_num, key, ret)

    def before_job(self, key: str, worker: WorkerHandle, job: Job, config: DictConfig) -> dict[str, Any]:
        """Done on the host right before a job is handed to its worker; what the run request carries besides the
        job (none here: the container pool applies GPU settings). An exception fails the job, unstarted."""
        return {}

    def route_key(self, config: DictConfig) -> str:
        """The value at `route_by` (one warm worker per value, e.g. per backend)."""
        return str(OmegaConf.select(config, self.options.route_by, default=None) or "default")

    def _finish(self, job_num: int, key: str, ret: JobReturn) -> JobReturn:
        reporter = self._reporter_for(None)
        reporter.finished(job_num, ret)
        if reporter.records:
            # the campaign has recorded the job: drop its config copies, which a long batch would otherwise
            # keep by the thousand (the result, config files and manifest hold everything they said)
            ret.cfg = ret.hydra_cfg = None
        return ret

    def refuse(self, job: Job, config: DictConfig, error: BaseException) -> JobReturn:
        """Fail a composed job without handing it to a worker (its attempt counts)."""
        self._reporter_for(config).started(job.num, key=self.route_key(config), label=job.label)
        return self._finish(job.num, "", self._failed(config, job.overrides, error))

    def compose_failed(self, job: Job, error: Exception) -> JobReturn:
        """A job whose config could not be composed: failed, with Hydra's message."""
        self._reporter_for(None).started(job.num, label=job.label)
        ret = JobReturn(overrides=list(job.overrides), status=JobStatus.FAILED,
                        _return_value=JobFailure(f"job {job.num} could not be composed: {error}"))
        return self._finish(job.num, "", ret)

    def mark_interrupted(self, job_num: int | None) -> None:
        if self.reporter is not None:
            self.reporter.interrupted(job_num)
