"""What runs inside one SLURM job: a group's Hydra jobs, in order, in one process, with the model kept.

`GroupJob` is checkpointable as submitit defines it (it has a `checkpoint` method): when SLURM preempts
the job or its time limit comes, submitit requeues it with the same state, and on the new start every
job whose result.json is already complete (a whole result carrying the job's config hash) is skipped,
so no result is produced twice. Each job's SLURM job id and node go to `<job dir>/.slurm.json` as the job starts,
and its outcome to `<sweep dir>/.slurm-outcomes/<SLURM job id>/<job num>.pkl` as it ends, so the submitting
side records every job as it happens, not when the whole group returns.

A serving group's jobs share the engine server the session keeps (one start per server settings); it is
stopped before the group returns. A cancelled SLURM job's signals reach the server too (it is a child of the
group's process, in its own session), and its parent-death signal ends it if the group's process is killed.

With a container configured, the SLURM job starts the container and the group runs in it:

    python -m llem.launch.slurm.job PAYLOAD OUTCOMES
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# No submitit import at module level: inside a container this module runs the group, and an image needs llem,
# not the submitting side's SLURM client library.
from llem.launch.slurm.groups import JobSpec
from llem.launch.slurm.options import SlurmContainerOptions
from llem.launch.slurm.pacing import GroupHealth, GroupPacing, JobTimedOut, Period, time_limit

PLACEMENT_FILENAME = ".slurm.json"
OUTCOMES_DIRNAME = ".slurm-outcomes"
NODE_ENV = "LLEM_SLURM_NODE"
IN_CONTAINER_ENV = "LLEM_SLURM_IN_CONTAINER"


@dataclass
class JobOutcome:
    """One job's return from the SLURM job, with where it ran."""

    job_num: int
    job_return: Any  # hydra.core.utils.JobReturn
    slurm_job_id: str | None
    node: str | None
    skipped: bool = False  # its complete result was already there (a requeued or resumed group)
    # campaign events the group recorded before this job (health checks, releases), for the campaign's state
    events: list[dict[str, Any]] = field(default_factory=list)


def current_placement() -> dict[str, str | None]:
    job_id = os.environ.get("SLURM_JOB_ID")
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return {"slurm_job_id": job_id, "node": os.environ.get(NODE_ENV) or socket.gethostname()}


def write_placement(job_dir: str, placement: dict[str, str | None]) -> None:
    from llem.atomic import atomic_write_json

    path = Path(job_dir)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / PLACEMENT_FILENAME, placement)


def read_placement(job_dir: str) -> dict[str, str | None] | None:
    try:
        data = json.loads((Path(job_dir) / PLACEMENT_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return {"slurm_job_id": data.get("slurm_job_id"), "node": data.get("node")} if isinstance(data, dict) else None


def outcome_path(sweep_dir: str, slurm_job_id: str | None, job_num: int) -> Path:
    """Where a group leaves one job's outcome as soon as the job ends (per SLURM job: an older SLURM job's
    outcome of the same job is never taken for this one's)."""
    return Path(sweep_dir) / OUTCOMES_DIRNAME / str(slurm_job_id or "local") / f"{job_num}.pkl"


def write_outcome(sweep_dir: str, outcome: JobOutcome, slurm_job_id: str | None = None) -> None:
    """`slurm_job_id`: the SLURM job reporting it (a skipped job's outcome names the one that ran it)."""
    import cloudpickle

    from llem.atomic import atomic_write

    data = cloudpickle.dumps(outcome)
    path = outcome_path(sweep_dir, slurm_job_id or outcome.slurm_job_id, outcome.job_num)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def read_outcome(sweep_dir: str, slurm_job_id: str, job_num: int) -> JobOutcome | None:
    """A job's outcome, once its group has written it (None before, or when it cannot be read)."""
    import cloudpickle

    try:
        outcome = cloudpickle.loads(outcome_path(sweep_dir, slurm_job_id, job_num).read_bytes())
    except Exception:  # noqa: BLE001 - not there yet, or not readable here
        return None
    return outcome if isinstance(outcome, JobOutcome) else None


def submissions_path(sweep_dir: str) -> Path:
    return Path(sweep_dir) / OUTCOMES_DIRNAME / "submitted.json"


def recorded_submissions(sweep_dir: str) -> dict[int, dict[str, str]]:
    """The SLURM job each job was last submitted in, by job number: {"slurm_job_id", "job_dir"}."""
    try:
        data = json.loads(submissions_path(sweep_dir).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {int(k): v for k, v in data.items() if str(k).isdigit() and isinstance(v, dict) and v.get("slurm_job_id")}


def record_submission(sweep_dir: str, slurm_job_id: str, job_dirs: dict[int, str]) -> None:
    """Record, as soon as sbatch answers, which SLURM job runs which jobs: a run that takes over from a killed
    one finds a queued group here before the group has written anything (only the orchestrator writes it)."""
    from llem.atomic import atomic_write_json

    records = recorded_submissions(sweep_dir)
    for num, job_dir in job_dirs.items():
        records[num] = {"slurm_job_id": str(slurm_job_id), "job_dir": str(job_dir)}
    atomic_write_json(submissions_path(sweep_dir), {str(k): v for k, v in sorted(records.items())})


def _set_planned(experiment: Any) -> None:
    """Hand llem's task the settings the campaign validated for the next job (it then does not validate again)."""
    if experiment is None and "llem.task" not in sys.modules:
        return
    import importlib

    planned = importlib.import_module("llem.task").PLANNED
    planned.clear()
    if experiment is not None:
        planned["experiment"] = experiment


def result_done(job_dir: str, config_hash: str | None) -> bool:
    """A whole, valid result.json for this configuration is in the job dir (resume's completeness rule)."""
    if config_hash is None:
        return False
    from pydantic import ValidationError

    from llem.measure.result import RESULT_FILENAME, read_result

    path = Path(job_dir) / RESULT_FILENAME
    if not path.is_file():
        return False
    try:
        return read_result(path).config_hash == config_hash
    except (ValidationError, ValueError, OSError):
        return False


def _with_output_dir(spec: JobSpec) -> Any:
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(spec.config.hydra, resolve=False)})
    OmegaConf.update(hydra_cfg, "hydra.runtime.output_dir", spec.job_dir, force_add=True)
    return hydra_cfg


def completed_return(spec: JobSpec) -> Any:
    """The JobReturn of a job whose complete result is already on disk (not run again)."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from llem.measure.result import RESULT_FILENAME

    task_cfg = OmegaConf.masked_copy(spec.config, [k for k in spec.config if k != "hydra"])
    path = str(Path(spec.job_dir) / RESULT_FILENAME)
    return JobReturn(
        overrides=list(spec.overrides), cfg=task_cfg, hydra_cfg=_with_output_dir(spec), working_dir=spec.job_dir,
        task_name=str(spec.config.hydra.job.name), status=JobStatus.COMPLETED,
        _return_value={"result_path": path, "config_hash": spec.config_hash, "resumed": True},
    )


def failed_return(spec: JobSpec, error: BaseException) -> Any:
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    task_cfg = OmegaConf.masked_copy(spec.config, [k for k in spec.config if k != "hydra"])
    return JobReturn(
        overrides=list(spec.overrides), cfg=task_cfg, hydra_cfg=_with_output_dir(spec), working_dir=spec.job_dir,
        task_name=str(spec.config.hydra.job.name), status=JobStatus.FAILED, _return_value=error,
    )


class GroupJob:
    """A group's jobs, run in order in one process (the SLURM job's), so `llem.task.SESSION` keeps the model."""

    def __init__(
        self,
        jobs: list[JobSpec],
        task_function: Any,
        callbacks: Any,
        singleton_state: dict[str, Any],
        *,
        sweep_dir: str,
        env: dict[str, str] | None = None,
        passthrough: list[str] | None = None,
        container: SlurmContainerOptions | None = None,
        image: str | None = None,
        gpus: int = 0,
        warmup: dict[str, Any] | None = None,
        gap_s: float = 0.0,
        cold_start: bool = False,
        pacing: GroupPacing | None = None,
    ) -> None:
        self.jobs = jobs
        self.task_function = task_function
        self.callbacks = callbacks
        self.singleton_state = singleton_state
        self.sweep_dir = sweep_dir
        self.env = dict(env or {})
        self.passthrough = list(passthrough or [])
        self.container = container
        self.image = image
        self.gpus = gpus
        self.warmup = warmup
        self.pacing = pacing or GroupPacing(config_gap_s=gap_s)
        self.gap_s = self.pacing.config_gap_s
        self.cold_start = cold_start
        self._container_name: str | None = None

    # ------------------------------------------------------------------ submitit's entry points
    def __call__(self) -> list[JobOutcome]:
        if self.container is not None and not os.environ.get(IN_CONTAINER_ENV):
            return self.run_in_container()
        return self.run()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or out of time: requeue this same group; finished jobs are skipped when it restarts.

        submitit calls this on any submitted callable that has it (as on its `helpers.Checkpointable`)."""
        from submitit.helpers import DelayedSubmission

        self._remove_container()
        self._container_name = None
        return DelayedSubmission(self, *args, **kwargs)

    # ------------------------------------------------------------------ in this process
    def run(self) -> list[JobOutcome]:
        try:
            return self._run_jobs()
        finally:
            _stop_server()

    def _run_jobs(self) -> list[JobOutcome]:
        from hydra.core.utils import setup_globals

        from llem.launch import protocol

        os.environ.update(self.env)
        protocol.apply_singleton_state(self.singleton_state)
        setup_globals()
        placement = current_placement()
        health = self._health()
        outcomes: list[JobOutcome] = []
        ran = 0
        previous: Period | None = None
        for spec in self.jobs:
            if result_done(spec.job_dir, spec.config_hash):
                where = read_placement(spec.job_dir) or placement
                outcomes.append(self._ended(JobOutcome(spec.job_num, completed_return(spec), skipped=True, **where)))
                print(f"llem: job {spec.job_num} already has its result; skipped", file=sys.stderr, flush=True)
                continue
            if ran:
                self._gap(spec.period, previous)
                if self.cold_start:
                    _release_model()
            previous = spec.period
            if health is not None and health.disabled_reason is None and health.due(spec.period):
                health.check(spec.key, spec.job_num, spec.period)
            write_placement(spec.job_dir, placement)
            if health is not None and health.disabled_reason is not None:
                from llem.launch.outcome import JobFailure

                ret = failed_return(spec, JobFailure(health.disabled_reason))
            else:
                if ran == 0 and self.warmup:
                    from llem.launch.worker import _set_campaign_warmup

                    _set_campaign_warmup(self.warmup)
                ret = self._run_one(spec)
                ran += 1
            if health is not None:
                health.since_check += 1
            events = health.take_events() if health is not None else []
            outcomes.append(self._ended(JobOutcome(spec.job_num, ret, events=events, **placement)))
        return outcomes

    def _ended(self, outcome: JobOutcome) -> JobOutcome:
        """Leave the outcome where the submitting side looks for it now, not when the whole group returns."""
        try:
            write_outcome(self.sweep_dir, outcome, current_placement()["slurm_job_id"])
        except Exception as error:  # noqa: BLE001 - the group's final return still carries it
            print(f"llem: could not write job {outcome.job_num}'s outcome early: {error}", file=sys.stderr, flush=True)
        return outcome

    def _gap(self, period: Period, previous: Period | None) -> None:
        """The config gap between two jobs, or the cycle gap when the (repetition, cycle) changes."""
        new_cycle = period[1] is not None and previous is not None and period != previous
        seconds = self.pacing.cycle_gap_s if new_cycle else self.pacing.config_gap_s
        if seconds > 0:
            print(f"llem: waiting {seconds:g} s ({'cycle' if new_cycle else 'config'} gap)", file=sys.stderr,
                  flush=True)
            time.sleep(seconds)

    def _health(self) -> GroupHealth | None:
        if self.pacing.health is None:
            return None
        return GroupHealth(self.pacing.health, probe=_probe_gpus, release=_release_model)

    def _run_one(self, spec: JobSpec) -> Any:
        from hydra.core.utils import JobStatus, run_job
        from hydra.types import HydraContext

        from llem.launch.worker import _safe_exception

        print(f"llem: job {spec.job_num}: {' '.join(spec.overrides)}", file=sys.stderr, flush=True)
        limit = self.pacing.timeout_s
        _set_planned(spec.experiment)
        try:
            with time_limit(limit):
                ret = run_job(
                    hydra_context=HydraContext(config_loader=None, callbacks=self.callbacks),
                    task_function=self.task_function,
                    config=spec.config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
        except JobTimedOut:
            from llem.launch.outcome import JobFailure

            _release_model()  # it may have stopped mid-generation: the next job loads it afresh
            if result_done(spec.job_dir, spec.config_hash):  # the limit came as the job was returning
                return completed_return(spec)
            return failed_return(spec, JobFailure(
                f"job {spec.job_num} timed out after {limit:g} s (campaign.execution.experiment_timeout_seconds); "
                "it was stopped and its model released"))
        except Exception as error:  # noqa: BLE001 - fails this job only
            return failed_return(spec, _safe_exception(error))
        if ret.status == JobStatus.FAILED:
            ret._return_value = _safe_exception(ret._return_value)
        return ret

    # ------------------------------------------------------------------ in a container on the node
    def run_in_container(self) -> list[JobOutcome]:
        import cloudpickle

        from llem.launch.slurm.container import container_argv, mounts_for

        assert self.container is not None and self.image is not None
        work = Path(self.sweep_dir) / ".slurm-containers" / f"{os.environ.get('SLURM_JOB_ID', 'local')}-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True, exist_ok=True)
        payload, out = work / "payload.pkl", work / "outcomes.pkl"
        inner = GroupJob.__new__(GroupJob)
        inner.__dict__.update(self.__dict__)
        inner.container = None
        payload.write_bytes(cloudpickle.dumps(inner))
        mounts, cache_env = mounts_for(self.container, self.sweep_dir)
        for source, _, _ in mounts:
            Path(source).mkdir(parents=True, exist_ok=True)
        gpu_uuids: list[str] = []
        if self.gpus > 0:
            from llem.launch.slurm.gpus import SlurmGpuError, job_gpu_uuids

            try:
                gpu_uuids = job_gpu_uuids(os.environ)
            except SlurmGpuError as error:
                return self._all_failed(RuntimeError(f"the group did not start: {error}"))
        environ = {**os.environ, NODE_ENV: socket.gethostname(), IN_CONTAINER_ENV: "1"}
        self._container_name = f"llem-slurm-{os.environ.get('SLURM_JOB_ID', 'local')}-{uuid.uuid4().hex[:6]}"
        argv = container_argv(
            self.container, image=self.image,
            command=[self.container.python, "-m", "llem.launch.slurm.job", str(payload), str(out)],
            mounts=mounts, workdir=self.sweep_dir, gpus=self.gpus,
            env={**cache_env, **self.env, IN_CONTAINER_ENV: "1"},
            passthrough=self.passthrough, environ=environ,
            name=self._container_name if self.container.engine == "podman" else None,
            gpu_uuids=gpu_uuids,
        )
        previous = signal.getsignal(signal.SIGTERM)

        def _cancelled(signum: int, frame: Any) -> None:  # scancel: take the container down with the job
            self._remove_container()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, _cancelled)
        try:
            proc = subprocess.run(argv, check=False, env=environ, stdin=subprocess.DEVNULL)
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._container_name = None
        if out.is_file():
            outcomes: list[JobOutcome] = cloudpickle.loads(out.read_bytes())
            return outcomes
        return self._all_failed(RuntimeError(f"the {self.container.engine} container exited with code "
                                             f"{proc.returncode} before reporting; see the SLURM job's log"))

    def _all_failed(self, error: BaseException) -> list[JobOutcome]:
        """Every job without a complete result fails with `error` (the group could not run them)."""
        placement = current_placement()
        return [
            self._ended(JobOutcome(s.job_num, completed_return(s), skipped=True,
                                   **(read_placement(s.job_dir) or placement)))
            if result_done(s.job_dir, s.config_hash)
            else self._ended(JobOutcome(s.job_num, failed_return(s, error), **placement))
            for s in self.jobs
        ]

    def _remove_container(self) -> None:
        name = self._container_name
        if name and self.container is not None and self.container.engine == "podman":
            subprocess.run(["podman", "rm", "--force", "--time", "0", name], check=False, capture_output=True)


def _probe_gpus() -> dict[str, Any]:
    """GPU memory use per device, as a worker's health check reads it."""
    from llem.launch.worker import _health

    return _health()


def _release_model() -> None:
    task = sys.modules.get("llem.task")
    if task is not None:
        task.SESSION.release()


def _stop_server() -> None:
    """Stop the engine server the group's serving jobs shared, before the group returns: the launcher sees the
    SLURM job end only then, so no server of the group is left on the node after it (and none outlives the
    group's own process, which would otherwise stop it only at interpreter exit, after reporting)."""
    task = sys.modules.get("llem.task")
    if task is None:
        return
    try:
        task.SESSION.stop_server()
    except Exception as error:  # noqa: BLE001 - the outcomes are already written; the tether still ends it
        print(f"llem: could not stop the group's server: {error}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run a group's jobs from a payload (inside a container); write their outcomes."""
    import cloudpickle

    from llem.atomic import atomic_write

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m llem.launch.slurm.job PAYLOAD OUTCOMES", file=sys.stderr)
        return 2
    job: GroupJob = cloudpickle.loads(Path(args[0]).read_bytes())
    outcomes = job.run()
    atomic_write(Path(args[1]), lambda tmp: tmp.write_bytes(cloudpickle.dumps(outcomes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

