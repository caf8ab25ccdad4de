"""What runs inside one SLURM job: a group's Hydra jobs, in order, in one process, with the model kept.

`GroupJob` is checkpointable as submitit defines it (it has a `checkpoint` method): when SLURM preempts
the job or its time limit comes, submitit requeues it with the same state, and on the new start every
job whose result.json is already complete (a whole result carrying the job's config hash) is skipped,
so no result is produced twice. Each job's SLURM job id and node go to `<job dir>/.slurm.json` as the job starts.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# No submitit import at module level: inside a container this module runs the group, and an image needs llem,
# not the submitting side's SLURM client library.
from llem.launch.slurm.groups import JobSpec
from llem.launch.slurm.options import SlurmContainerOptions

PLACEMENT_FILENAME = ".slurm.json"
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
        self.gap_s = gap_s
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
        from hydra.core.utils import setup_globals

        from llem.launch import protocol

        os.environ.update(self.env)
        protocol.apply_singleton_state(self.singleton_state)
        setup_globals()
        placement = current_placement()
        outcomes: list[JobOutcome] = []
        ran = 0
        for spec in self.jobs:
            if result_done(spec.job_dir, spec.config_hash):
                where = read_placement(spec.job_dir) or placement
                outcomes.append(JobOutcome(spec.job_num, completed_return(spec), skipped=True, **where))
                print(f"llem: job {spec.job_num} already has its result; skipped", file=sys.stderr, flush=True)
                continue
            if ran:
                if self.gap_s > 0:
                    time.sleep(self.gap_s)
                if self.cold_start:
                    _release_model()
            write_placement(spec.job_dir, placement)
            if ran == 0 and self.warmup:
                from llem.launch.worker import _set_campaign_warmup

                _set_campaign_warmup(self.warmup)
            outcomes.append(JobOutcome(spec.job_num, self._run_one(spec), **placement))
            ran += 1
        return outcomes

    def _run_one(self, spec: JobSpec) -> Any:
        from hydra.core.utils import JobStatus, run_job
        from hydra.types import HydraContext

        from llem.launch.worker import _safe_exception

        print(f"llem: job {spec.job_num}: {' '.join(spec.overrides)}", file=sys.stderr, flush=True)
        try:
            ret = run_job(
                hydra_context=HydraContext(config_loader=None, callbacks=self.callbacks),
                task_function=self.task_function,
                config=spec.config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
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
        environ = {**os.environ, NODE_ENV: socket.gethostname(), IN_CONTAINER_ENV: "1"}
        self._container_name = f"llem-slurm-{os.environ.get('SLURM_JOB_ID', 'local')}-{uuid.uuid4().hex[:6]}"
        argv = container_argv(
            self.container, image=self.image,
            command=[self.container.python, "-m", "llem.launch.slurm.job", str(payload), str(out)],
            mounts=mounts, workdir=self.sweep_dir, gpus=self.gpus,
            env={**cache_env, **self.env, IN_CONTAINER_ENV: "1"},
            passthrough=self.passthrough, environ=environ,
            name=self._container_name if self.container.engine == "podman" else None,
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
        error = RuntimeError(f"the {self.container.engine} container exited with code {proc.returncode} "
                             f"before reporting; see the SLURM job's log")
        placement = current_placement()
        return [
            JobOutcome(s.job_num, completed_return(s), skipped=True, **(read_placement(s.job_dir) or placement))
            if result_done(s.job_dir, s.config_hash)
            else JobOutcome(s.job_num, failed_return(s, error), **placement)
            for s in self.jobs
        ]

    def _remove_container(self) -> None:
        name = self._container_name
        if name and self.container is not None and self.container.engine == "podman":
            subprocess.run(["podman", "rm", "--force", "--time", "0", name], check=False, capture_output=True)


def _release_model() -> None:
    task = sys.modules.get("llem.task")
    if task is not None:
        task.SESSION.release()


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

