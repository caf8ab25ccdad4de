"""The runner's policy, with scripted fake workers: gaps, health checks, restarts, attempts, cold starts.

No processes and no sleeping: a `FakeWorker` answers the runner's requests as a test scripts them and
records every request and lifecycle call in one timeline, which the tests compare exactly. The campaign
state is real (SQLite in tmp_path) and is read back as another process would (`read_state`).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hydra._internal.callbacks import Callbacks
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from llem.campaign.session import JobSession
from llem.campaign.state import CampaignState, read_state
from llem.config import CampaignSettings
from llem.config.errors import ConfigError
from llem.launch import protocol
from llem.launch.handle import WorkerDied, WorkerHandle, WorkerTimeout
from llem.launch.jobs import Job
from llem.launch.runner import HEALTH_TIMEOUT_S, CampaignRunner, RunnerOptions
from llem.launch.worker import _safe_exception
from llem.plan.manifest import CampaignManifest, ManifestJob, utc_now

CONFIG_GAP = 1.0
CYCLE_GAP = 10.0


def task_function(cfg: DictConfig) -> None:  # module level: travels by reference in the run message
    return None


# ---------------------------------------------------------------------------------------------- fake worker
OK = "ok"  # completed JobReturn
DIE = "die"  # the worker process ends during the job
TIMEOUT = "timeout"  # the worker does not answer in time
REFUSE = "refuse"  # the worker answers ok=False (it could not run the job)
STOPPED = "stopped"  # the launcher is stopped (Ctrl-C) while the job runs: its worker is killed under it


@dataclass
class Script:
    """What the fake workers do: per job number, one action per attempt (default OK); health answers per key."""

    actions: dict[int, list[Any]] = field(default_factory=dict)
    health: dict[str, list[Any]] = field(default_factory=dict)
    timeline: list[tuple[Any, ...]] = field(default_factory=list)  # (key, what[, job_num]) and ("sleep", seconds)
    stop: Callable[[], None] | None = None  # the runner's stop_all, for STOPPED

    def next_action(self, job_num: int) -> Any:
        queue = self.actions.get(job_num)
        return queue.pop(0) if queue else OK

    def next_health(self, key: str) -> Any:
        queue = self.health.get(key)
        return queue.pop(0) if queue else 10.0


class FakeWorker(WorkerHandle):
    """A WorkerHandle whose process is a few attributes: `start` and `kill` flip `running`,
    `restart` is the real one (kill, then start), `request` follows the script."""

    def __init__(self, key: str, socket_dir: Path, script: Script) -> None:
        super().__init__(key, socket_dir, {})
        self.script = script
        self.alive = False
        self.messages: list[dict[str, Any]] = []  # every request, as sent
        self.timeouts: list[tuple[str, float | None]] = []

    # the abstract process hooks are never reached: start/kill/stop are replaced below
    def _launch(self) -> None:
        raise AssertionError("not used")

    def _relaunch(self) -> None:
        raise AssertionError("not used")

    def _alive(self) -> bool:
        return self.alive

    def _terminate(self) -> None:
        self.alive = False

    def exit_report(self) -> str:
        return "exit status -9 (fake)"

    @property
    def running(self) -> bool:
        return self.alive

    def start(self) -> None:  # as WorkerHandle.start: a fresh process has run nothing and has no context
        self.starts += 1
        self.jobs_run = 0
        self.context_sent = False
        self.alive = True
        self.script.timeline.append((self.key, "start"))

    def kill(self) -> None:
        self.alive = False
        self.script.timeline.append((self.key, "kill"))

    def stop(self) -> None:
        self.alive = False
        self.script.timeline.append((self.key, "stop"))

    def request(
        self, message: dict[str, Any], timeout: float | None, while_waiting: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        if not self.alive:
            raise WorkerDied(f"worker '{self.key}' is not running")
        op = message["op"]
        self.messages.append(message)
        self.timeouts.append((op, timeout))
        if op == protocol.OP_HEALTH:
            self.script.timeline.append((self.key, op))
            used = self.script.next_health(self.key)
            if used == TIMEOUT:
                raise WorkerTimeout(f"worker '{self.key}' gave no answer within {timeout} s")
            return {"ok": True, "devices": {"0": {"used_pct": used}}}
        if op == protocol.OP_UNLOAD:
            self.script.timeline.append((self.key, op))
            return {"ok": True}
        assert op == protocol.OP_RUN, op
        config = protocol.unpack(message["config"])
        job_num = int(config.hydra.job.num)
        self.script.timeline.append((self.key, op, job_num))
        if while_waiting is not None:
            while_waiting()
        action = self.script.next_action(job_num)
        if action == STOPPED:
            assert self.script.stop is not None
            self.script.stop()
        if action in (DIE, STOPPED):
            self.alive = False
            raise WorkerDied(f"worker '{self.key}' died: {self.exit_report()}")
        if action == TIMEOUT:
            raise WorkerTimeout(f"worker '{self.key}' gave no answer within {timeout} s")
        if action == REFUSE:
            raise RuntimeError(f"worker '{self.key}': cannot unpickle the task")
        if action == OK:
            ret = job_return(config, JobStatus.COMPLETED, None)
        else:  # an exception: the job ran and failed with it
            ret = job_return(config, JobStatus.FAILED, action)
        return {"ok": True, "job_return": protocol.pack(ret), "elapsed_s": 0.01}


def job_return(config: DictConfig, status: JobStatus, value: Any) -> JobReturn:
    """What hydra.core.utils.run_job returns in a worker."""
    return JobReturn(
        overrides=[],
        cfg=OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]),
        hydra_cfg=OmegaConf.create({"hydra": config.hydra}),
        working_dir=str(config.hydra.runtime.output_dir),
        task_name=str(config.hydra.job.name),
        status=status,
        _return_value=value,
    )


# ---------------------------------------------------------------------------------------------- the rig
def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


BASE_SETTINGS: dict[str, Any] = {
    "execution": {"config_gap_seconds": CONFIG_GAP, "cycle_gap_seconds": CYCLE_GAP},
    "health_check": {"enabled": False},
}


@dataclass
class Rig:
    tmp: Path
    script: Script
    state: CampaignState
    session: JobSession
    runner: CampaignRunner
    made: list[str] = field(default_factory=list)  # keys make_worker was called with, in order
    workers: dict[str, FakeWorker] = field(default_factory=dict)

    def config(self, job_num: int) -> DictConfig:
        job = self.state.job(job_num)
        sweep = self.tmp / "sweep"
        return OmegaConf.create({
            "backend": {"name": job.backend},
            "hydra": {
                "job": {"num": job_num, "name": "llem", "id": f"llem_{job_num}"},
                "sweep": {"dir": str(sweep), "subdir": str(job_num)},
                "runtime": {"output_dir": str(sweep / str(job_num))},
            },
        })  # fmt: skip

    def job(self, job_num: int) -> Job:
        """The job as the campaign plans it for a launcher."""
        job = self.state.job(job_num)
        return Job(num=job_num, overrides=tuple(job.overrides), cycle=job.cycle, repetition=job.repetition)

    def run(self, *job_nums: int) -> list[JobReturn]:
        context = HydraContext(config_loader=None, callbacks=Callbacks())  # type: ignore[arg-type]
        return [self.runner.run_job(self.job(n), self.config(n), task_function, context) for n in job_nums]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The events as the database holds them (what a report or `llem status` would read); gaps only if asked."""
        manifest = read_state(self.state.manifest_path)
        assert manifest is not None
        return [e for e in manifest.events if e["kind"] == kind or (kind is None and e["kind"] != "gap")]

    def stored_job(self, job_num: int) -> ManifestJob:
        manifest = read_state(self.state.manifest_path)
        assert manifest is not None
        return manifest.job(job_num)

    def ops(self, key: str | None = None, *, sleeps: bool = True) -> list[tuple[Any, ...]]:
        """The timeline, optionally one key's (its sleeps kept), without the key column."""
        out = []
        for entry in self.script.timeline:
            if entry[0] == "sleep":
                if sleeps:
                    out.append(entry)
            elif key is None or entry[0] == key:
                out.append(entry[1:] if key is not None else entry)
        return out

    def runs(self, key: str | None = None) -> list[int]:
        return [e[-1] for e in self.script.timeline if e[1] == protocol.OP_RUN and key in (None, e[0])]


def make_rig(
    tmp_path: Path,
    jobs: list[tuple[int, str, int, int]],  # (job_num, backend, cycle, repetition), in run order
    settings: dict[str, Any] | None = None,
    options: RunnerOptions | None = None,
    real_sleep: bool = False,  # the runner's own (stoppable) sleep instead of the recorded fake
    worker_type: type[FakeWorker] | None = None,
) -> Rig:
    manifest = CampaignManifest(
        campaign_name="policy", config_hash="h", created_at=utc_now(), updated_at=utc_now(),
        sweep_dir=str(tmp_path / "sweep"), cycles=max(c for _, _, c, _ in jobs) + 1, structure="interleaved",
        jobs=[
            ManifestJob(job_num=n, overrides=[f"backend={b}", f"+n={n}"], backend=b, cycle=c, repetition=r,
                        config_hash=f"c{n}")
            for n, b, c, r in jobs
        ],
    )  # fmt: skip
    state = CampaignState(tmp_path / ".state" / "campaign_manifest.json", export_interval_s=0.0)
    state.replace(manifest)
    campaign = CampaignSettings.model_validate(_merge(BASE_SETTINGS, settings or {}))
    session = JobSession(state, campaign, campaign_name="policy")
    script = Script()

    def fake_sleep(seconds: float) -> None:
        script.timeline.append(("sleep", seconds))

    rig: Rig

    def make_worker(key: str) -> FakeWorker:
        rig.made.append(key)
        worker = (worker_type or FakeWorker)(key, tmp_path / "sockets", script)
        rig.workers[key] = worker
        return worker

    runner = CampaignRunner(make_worker, options or RunnerOptions(), sleep=None if real_sleep else fake_sleep)
    runner.attach(session)
    script.stop = runner.stop_all
    rig = Rig(tmp_path, script, state, session, runner)
    return rig


def one_key(n: int, cycles: int = 1, repetitions: int = 1, backend: str = "pytorch") -> list[tuple[int, str, int, int]]:
    """n jobs per (repetition, cycle), in run order, numbered from 0."""
    out = []
    for r in range(repetitions):
        for c in range(cycles):
            for _ in range(n):
                out.append((len(out), backend, c, r))
    return out


def error_of(ret: JobReturn) -> str:
    assert ret.status == JobStatus.FAILED
    return str(ret._return_value)


# ---------------------------------------------------------------------------------------------- 0. hand-over
def test_context_is_sent_once_per_worker_start_and_warmup_until_a_job_completes(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(4), {"execution": {"warmup_prompts": 3, "warmup_timeout_seconds": 42}})
    rig.script.actions = {0: [ValueError("boom")]}
    waited: list[int] = []
    context = HydraContext(config_loader=None, callbacks=Callbacks())  # type: ignore[arg-type]
    for n in range(3):
        rig.runner.run_job(rig.job(n), rig.config(n), task_function, context, while_waiting=lambda n=n: waited.append(n))
    worker = rig.workers["pytorch"]
    m0, m1, m2 = worker.messages
    assert protocol.unpack(m0["task_function"]) is task_function
    assert isinstance(protocol.unpack(m0["hydra_context"]), HydraContext)
    assert "task_function" not in m1 and "hydra_context" not in m1 and "task_function" not in m2
    # job 0 failed: the worker is not warm yet, so job 1 carries the warmup again; job 1 completed, job 2 does not
    assert m0["campaign_warmup"] == m1["campaign_warmup"] == {"prompts": 3, "timeout_s": 42.0}
    assert "campaign_warmup" not in m2
    assert waited == [0, 1, 2]  # while_waiting reached the worker's request, once per job
    assert rig.made == ["pytorch"] and worker.starts == 1 and worker.jobs_run == 3
    assert rig.runner.restarts == 0


# ---------------------------------------------------------------------------------------------- 1. gaps
def test_gaps_config_within_a_cycle_cycle_between_cycles_none_before_the_first(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(3, cycles=2))
    rig.run(*range(6))
    assert rig.ops("pytorch") == [
        ("start",), ("run", 0),
        ("sleep", CONFIG_GAP), ("run", 1),
        ("sleep", CONFIG_GAP), ("run", 2),
        ("sleep", CYCLE_GAP), ("run", 3),
        ("sleep", CONFIG_GAP), ("run", 4),
        ("sleep", CONFIG_GAP), ("run", 5),
    ]  # fmt: skip
    # each gap is recorded, so a campaign's state says it was waiting before a job, not running it
    assert [(e["gap"], e["seconds"], e["before_job"]) for e in rig.events("gap")] == [
        ("config", CONFIG_GAP, 1), ("config", CONFIG_GAP, 2), ("cycle", CYCLE_GAP, 3),
        ("config", CONFIG_GAP, 4), ("config", CONFIG_GAP, 5),
    ]  # fmt: skip


def test_a_new_daemon_repetition_is_a_new_cycle_even_with_one_cycle(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(2, cycles=1, repetitions=3))
    rig.run(*range(6))
    sleeps = [e[1] for e in rig.script.timeline if e[0] == "sleep"]
    assert sleeps == [CONFIG_GAP, CYCLE_GAP, CONFIG_GAP, CYCLE_GAP, CONFIG_GAP]


def test_gaps_cover_all_keys_and_a_zero_gap_is_not_slept(tmp_path: Path) -> None:
    jobs = [(0, "pytorch", 0, 0), (1, "vllm", 0, 0), (2, "pytorch", 1, 0), (3, "vllm", 1, 0)]
    rig = make_rig(tmp_path, jobs, {"execution": {"config_gap_seconds": 0, "cycle_gap_seconds": 5}})
    rig.run(0, 1, 2, 3)
    assert [e for e in rig.script.timeline if e[1] == "run" or e[0] == "sleep"] == [
        ("pytorch", "run", 0), ("vllm", "run", 1), ("sleep", 5.0), ("pytorch", "run", 2), ("vllm", "run", 3),
    ]  # fmt: skip
    assert rig.made == ["pytorch", "vllm"]


# ---------------------------------------------------------------------------------------------- 2. health checks
def test_health_is_checked_once_per_repetition_and_cycle(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(2, cycles=1, repetitions=4), {"health_check": {"enabled": True}})
    rig.run(*range(8))
    assert [e for e in rig.ops("pytorch", sleeps=False) if e != ("start",)] == [
        ("health",), ("run", 0), ("run", 1),
        ("health",), ("run", 2), ("run", 3),
        ("health",), ("run", 4), ("run", 5),
        ("health",), ("run", 6), ("run", 7),
    ]  # fmt: skip
    checks = rig.events("health_check")
    assert [(e["job_num"], e["healthy"], e["devices"]) for e in checks] == [
        (n, True, {"0": 10.0}) for n in (0, 2, 4, 6)
    ]
    assert {t for op, t in rig.workers["pytorch"].timeouts if op == "health"} == {HEALTH_TIMEOUT_S}
    assert rig.workers["pytorch"].starts == 1 and rig.events("worker_restart") == []


def test_health_is_checked_once_per_cycle_for_each_key(tmp_path: Path) -> None:
    jobs = [(0, "pytorch", 0, 0), (1, "vllm", 0, 0), (2, "pytorch", 0, 0), (3, "vllm", 0, 0),
            (4, "pytorch", 1, 0), (5, "vllm", 1, 0), (6, "pytorch", 1, 0), (7, "vllm", 1, 0)]  # fmt: skip
    rig = make_rig(tmp_path, jobs, {"health_check": {"enabled": True}})
    rig.run(*range(8))
    assert [(e["key"], e["job_num"]) for e in rig.events("health_check")] == [
        ("pytorch", 0), ("vllm", 1), ("pytorch", 4), ("vllm", 5)
    ]


def test_health_every_n_experiments_ignores_cycles(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(3, cycles=2), {"health_check": {"enabled": True, "interval_experiments": 2}})
    rig.run(*range(6))
    assert [e for e in rig.ops("pytorch", sleeps=False) if e != ("start",)] == [
        ("run", 0), ("run", 1), ("health",), ("run", 2), ("run", 3), ("health",), ("run", 4), ("run", 5),
    ]
    assert [e["job_num"] for e in rig.events("health_check")] == [2, 4]


def test_an_unhealthy_worker_is_restarted_before_the_job(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(2, cycles=2), {"health_check": {"enabled": True, "gpu_memory_threshold_pct": 90}})
    rig.script.health = {"pytorch": [95.5, 20.0]}
    rets = rig.run(0, 1)
    assert [r.status for r in rets] == [JobStatus.COMPLETED, JobStatus.COMPLETED]
    assert rig.ops("pytorch", sleeps=False) == [
        ("start",), ("health",), ("kill",), ("start",), ("run", 0), ("run", 1)
    ]
    assert [(e["kind"], e.get("healthy")) for e in rig.events()] == [("health_check", False), ("worker_restart", None)]
    check, restart = rig.events()
    assert check["devices"] == {"0": 95.5} and check["job_num"] == 0 and check["key"] == "pytorch"
    assert restart["key"] == "pytorch" and restart["restarts"] == 1
    assert restart["reason"] == "0 at 95.5% memory > 90%"
    assert rig.runner.restarts == 1 and rig.workers["pytorch"].starts == 2
    # the restarted worker needs its context again
    assert "task_function" in rig.workers["pytorch"].messages[1]


def test_a_worker_that_cannot_answer_the_health_check_is_restarted(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(1), {"health_check": {"enabled": True}})
    rig.script.health = {"pytorch": [TIMEOUT]}
    (ret,) = rig.run(0)
    assert ret.status == JobStatus.COMPLETED
    (check,) = rig.events("health_check")
    assert check["healthy"] is False
    assert check["reason"] == "no answer to the health check (worker 'pytorch' gave no answer within 30.0 s)"
    assert len(rig.events("worker_restart")) == 1 and rig.workers["pytorch"].starts == 2


# ---------------------------------------------------------------------------------------------- 3. restart budget
def test_after_max_restarts_the_key_is_disabled_and_its_jobs_fail_without_the_worker(tmp_path: Path) -> None:
    jobs = [(n, "pytorch", 0, 0) for n in range(5)] + [(5, "vllm", 0, 0)]
    rig = make_rig(tmp_path, jobs, {"health_check": {"max_restarts": 2}})
    rig.script.actions = {0: [DIE], 1: [DIE], 2: [DIE]}
    rets = rig.run(*range(6))
    assert rig.runs("pytorch") == [0, 1, 2]  # jobs 3 and 4 never reached the worker
    assert rig.runs("vllm") == [5] and rets[5].status == JobStatus.COMPLETED  # disabling is per key
    assert rig.workers["pytorch"].starts == 3 and rig.runner.restarts == 2
    assert [e["kind"] for e in rig.events()] == ["worker_restart", "worker_restart", "worker_disabled"]
    assert [e["restarts"] for e in rig.events("worker_restart")] == [1, 2]
    for n in (0, 1, 2):
        assert error_of(rets[n]).startswith(f"job {n}: worker 'pytorch' died")
    for n in (3, 4):
        assert error_of(rets[n]) == (
            "worker 'pytorch' is unusable (worker died during a job) and max_restarts (2) reached"
        )
        assert rig.stored_job(n).status == "failed" and "max_restarts (2)" in str(rig.stored_job(n).error)
    assert rig.ops("pytorch", sleeps=False)[-2:] == [("run", 2), ("kill",)]


def test_without_restart_on_failure_the_first_death_disables_the_key(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(3), {"health_check": {"restart_on_failure": False, "max_restarts": 5}})
    rig.script.actions = {0: [DIE]}
    rets = rig.run(0, 1, 2)
    assert rig.runs() == [0] and rig.workers["pytorch"].starts == 1 and rig.runner.restarts == 0
    assert [e["kind"] for e in rig.events()] == ["worker_disabled"]
    for ret in rets[1:]:
        assert error_of(ret) == "worker 'pytorch' is unusable (worker died during a job) and restarts are disabled"


def test_jobs_of_a_disabled_key_do_not_wait_for_a_gap(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(5), {"health_check": {"max_restarts": 0}})
    rig.script.actions = {0: [DIE]}
    rig.run(*range(5))
    assert rig.runs() == [0]
    assert [e for e in rig.script.timeline if e[0] == "sleep"] == []


def test_max_restarts_zero_disables_at_the_first_death(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(2), {"health_check": {"max_restarts": 0}})
    rig.script.actions = {0: [DIE]}
    rets = rig.run(0, 1)
    assert rig.runs() == [0] and "max_restarts (0) reached" in error_of(rets[1])


# ---------------------------------------------------------------------------------------------- 4. attempts
def test_every_hand_over_counts_one_attempt(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(4), {"health_check": {"max_restarts": 1}, "execution": {"experiment_timeout_seconds": 7}})
    rig.script.actions = {0: [TIMEOUT, OK], 1: [DIE]}
    rig.run(0)
    assert rig.stored_job(0).attempts == 1 and rig.stored_job(0).status == "failed"
    rig.run(0)  # a retry of the same job
    assert rig.stored_job(0).attempts == 2 and rig.stored_job(0).status == "completed"
    rig.run(1)  # dies; the budget (1) is spent: the key is disabled
    rig.run(2)  # failed by the runner itself
    rig.run(2)
    assert [rig.stored_job(n).attempts for n in range(4)] == [2, 1, 2, 0]
    assert [rig.stored_job(n).status for n in range(4)] == ["completed", "failed", "failed", "pending"]
    assert rig.runs() == [0, 0, 1]
    assert rig.session.attempts(2) == 2  # the session reads what the state holds


# ---------------------------------------------------------------------------------------------- 5. cold start
def test_force_cold_start_unloads_before_every_job_but_the_workers_first(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(5), {"cold_start": {"force_cold_start": True}})
    rig.script.actions = {2: [DIE]}
    rig.run(*range(5))
    assert rig.ops("pytorch", sleeps=False) == [
        ("start",), ("run", 0),
        ("unload",), ("run", 1),
        ("unload",), ("run", 2),  # dies: the restarted worker is cold already
        ("kill",), ("start",), ("run", 3),
        ("unload",), ("run", 4),
    ]  # fmt: skip
    assert rig.events("cold_start_restart") == []


def test_force_cold_start_counts_jobs_per_worker(tmp_path: Path) -> None:
    jobs = [(0, "pytorch", 0, 0), (1, "vllm", 0, 0), (2, "pytorch", 0, 0), (3, "vllm", 0, 0)]
    rig = make_rig(tmp_path, jobs, {"cold_start": {"force_cold_start": True}})
    rig.run(0, 1, 2, 3)
    assert rig.ops("pytorch", sleeps=False) == [("start",), ("run", 0), ("unload",), ("run", 2)]
    assert rig.ops("vllm", sleeps=False) == [("start",), ("run", 1), ("unload",), ("run", 3)]


def test_restart_container_restarts_the_worker_between_jobs(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(3), {"cold_start": {"restart_container": True}})
    rig.run(0, 1, 2)
    worker = rig.workers["pytorch"]
    assert worker.starts == 3 and rig.made == ["pytorch"]
    assert rig.ops("pytorch", sleeps=False) == [
        ("start",), ("run", 0), ("kill",), ("start",), ("run", 1), ("kill",), ("start",), ("run", 2)
    ]
    assert [(e["key"], e["job_num"]) for e in rig.events("cold_start_restart")] == [("pytorch", 1), ("pytorch", 2)]
    # each fresh worker gets the context and the warmup again
    assert all("task_function" in m and "campaign_warmup" in m for m in worker.messages)
    assert rig.runner.restarts == 0  # cold starts do not spend the failure budget


# ---------------------------------------------------------------------------------------------- 6. timeout
@pytest.mark.parametrize(("setting", "option", "used"), [(7.0, 3.0, 7.0), (None, 3.0, 3.0)])
def test_a_timed_out_job_fails_and_its_worker_is_killed_and_restarted(
    tmp_path: Path, setting: float | None, option: float, used: float
) -> None:
    rig = make_rig(
        tmp_path, one_key(2), {"execution": {"experiment_timeout_seconds": setting}}, RunnerOptions(timeout_s=option)
    )
    rig.script.actions = {0: [TIMEOUT]}
    rets = rig.run(0, 1)
    assert error_of(rets[0]) == f"job 0 timed out after {used:g} s on worker 'pytorch'; the worker was killed"
    assert rets[1].status == JobStatus.COMPLETED
    worker = rig.workers["pytorch"]
    assert [t for op, t in worker.timeouts if op == "run"] == [used, used]
    ops = rig.ops("pytorch", sleeps=False)
    assert ops[:2] == [("start",), ("run", 0)] and ops[-2:] == [("start",), ("run", 1)]
    assert ("kill",) in ops[2:-2] and worker.starts == 2
    assert [(e["kind"], e["reason"]) for e in rig.events()] == [("worker_restart", "job timeout")]
    assert "task_function" in worker.messages[1]


def test_a_timed_out_worker_is_killed_also_when_it_cannot_be_restarted(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(2), {"health_check": {"restart_on_failure": False},
                                          "execution": {"experiment_timeout_seconds": 5}})  # fmt: skip
    rig.script.actions = {0: [TIMEOUT]}
    rets = rig.run(0, 1)
    assert error_of(rets[0]).startswith("job 0 timed out after 5 s")
    assert error_of(rets[1]) == "worker 'pytorch' is unusable (job timeout) and restarts are disabled"
    assert rig.workers["pytorch"].alive is False and rig.workers["pytorch"].starts == 1  # not left running a job
    assert rig.runs() == [0] and [e["kind"] for e in rig.events()] == ["worker_disabled"]


def test_a_worker_that_refuses_a_job_fails_it_without_a_restart(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(2))
    rig.script.actions = {0: [REFUSE]}
    rets = rig.run(0, 1)
    assert error_of(rets[0]) == "job 0: worker 'pytorch': cannot unpickle the task"
    assert rets[1].status == JobStatus.COMPLETED and rig.workers["pytorch"].starts == 1 and rig.events() == []


# ---------------------------------------------------------------------------------------------- 7. outcome
def test_failure_outcomes_say_whether_a_retry_could_help(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(4))
    rig.script.actions = {
        0: [_safe_exception(ConfigError("batch_size must be >= 1")), DIE],  # as it leaves a worker, then a crash
        1: [ConfigError("bad")],  # the class itself (a worker on the host's own interpreter)
        2: [RuntimeError("CUDA error: an illegal memory access")],
        3: [DIE],
    }
    rig.run(0, 1, 2, 3)
    first = rig.stored_job(0)
    assert first.status == "failed" and first.retryable is False
    assert str(first.error).startswith("RuntimeError: ConfigError: batch_size must be >= 1")
    assert (rig.stored_job(1).retryable, rig.stored_job(1).error) == (False, "ConfigError: bad")
    assert rig.stored_job(2).retryable is True and rig.stored_job(2).status == "failed"
    died = rig.stored_job(3)
    assert died.retryable is True and str(died.error).startswith("JobFailure: job 3: worker 'pytorch' died")
    rig.run(0)  # the retry crashes: now a retry could help
    assert rig.stored_job(0).retryable is True and rig.stored_job(0).attempts == 2


def test_a_completed_job_records_its_result_path(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, one_key(1))
    rig.run(0)
    job = rig.stored_job(0)
    assert (job.status, job.error, job.attempts) == ("completed", None, 1)
    assert job.result_path == str(tmp_path / "sweep" / "0" / "result.json")


def test_stop_all_stops_every_worker(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, [(0, "pytorch", 0, 0), (1, "vllm", 0, 0)])
    rig.run(0, 1)
    rig.runner.stop_all()
    assert rig.script.timeline[-2:] == [("pytorch", "stop"), ("vllm", "stop")]


def test_no_worker_is_started_or_restarted_once_the_launcher_stops(tmp_path: Path) -> None:
    """A Ctrl-C stops every worker while job threads may still be in a job: the death they see is the stop's doing,
    and a worker they restarted would outlive the campaign."""
    rig = make_rig(tmp_path, one_key(2))
    rig.script.actions = {0: [STOPPED]}
    rets = rig.run(0, 1)
    assert rig.ops("pytorch") == [("start",), ("run", 0), ("stop",)]
    assert rig.events() == []  # no restart
    assert "worker 'pytorch' died" in error_of(rets[0]) and "the launcher is stopping" in error_of(rets[1])


def test_a_stop_ends_a_gap_at_once_and_its_job_never_starts(tmp_path: Path) -> None:
    """Side by side, a job thread may be in a config gap (60 s here) when Ctrl-C comes: the gap ends, and the job
    is neither started nor recorded (the launcher marks it interrupted; it runs on resume)."""
    import threading
    import time

    rig = make_rig(tmp_path, one_key(2), {"execution": {"config_gap_seconds": 60}}, real_sleep=True)
    rig.run(0)
    rets: list[JobReturn] = []
    thread = threading.Thread(target=lambda: rets.extend(rig.run(1)))
    began = time.monotonic()
    thread.start()
    while not rig.events("gap"):  # job 1's thread is in its gap
        time.sleep(0.01)
    rig.runner.stop_all()
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - began < 30
    assert "the launcher is stopping" in error_of(rets[0])
    assert rig.runs() == [0] and rig.stored_job(1).status == "pending" and rig.stored_job(1).attempts == 0


# ---------------------------------------------------------------------------------------------- 8. side by side
class UnkillableWorker(FakeWorker):
    """A worker whose process outlives a kill: the real `kill`, over a process that does not end in time."""

    def kill(self) -> None:
        self.script.timeline.append((self.key, "kill"))
        WorkerHandle.kill(self)

    def _terminate(self) -> None:
        raise subprocess.TimeoutExpired(["python", "-m", "llem.launch.worker"], 30)


def test_a_kill_that_does_not_finish_fails_that_job_and_the_campaign_goes_on(tmp_path: Path) -> None:
    jobs = [(0, "pytorch", 0, 0), (1, "pytorch", 0, 0), (2, "vllm", 0, 0)]
    rig = make_rig(tmp_path, jobs, {"execution": {"experiment_timeout_seconds": 5}}, worker_type=UnkillableWorker)
    rig.script.actions = {0: [TIMEOUT]}
    rets = rig.run(0, 1, 2)
    assert error_of(rets[0]) == (
        "job 0 timed out after 5 s on worker 'pytorch', and worker 'pytorch' did not end within 30 s of being killed"
    )
    assert rig.stored_job(0).status == "failed"  # recorded, not left running
    # the process may still hold its GPUs: it is never restarted, and its key's jobs fail without it
    assert rig.workers["pytorch"].starts == 1 and rig.runner.restarts == 0
    assert "did not end within 30 s" in error_of(rets[1]) and rig.stored_job(1).status == "failed"
    assert rets[2].status == JobStatus.COMPLETED and rig.runs() == [0, 2]
    assert [e["kind"] for e in rig.events()] == ["worker_disabled"]


def test_parallel_job_threads_share_one_restart_budget(tmp_path: Path) -> None:
    """Two workers die at the same moment with one restart left: exactly one is restarted."""
    rig = make_rig(tmp_path, [(0, "pytorch", 0, 0), (1, "vllm", 0, 0)], {"health_check": {"max_restarts": 1}},
                   RunnerOptions(gaps_per_worker=True))  # fmt: skip
    rig.script.actions = {0: [DIE], 1: [DIE]}
    both = threading.Barrier(2)
    budget = rig.runner._max_restarts

    def read_together() -> int:  # both threads read the budget before either spends it, if they can
        try:
            both.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass
        return budget()

    rig.runner._max_restarts = read_together  # type: ignore[method-assign]
    threads = [threading.Thread(target=rig.run, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert rig.runner.restarts == 1
    assert sorted(e["kind"] for e in rig.events()) == ["worker_disabled", "worker_restart"]
    assert sum(w.starts for w in rig.workers.values()) == 3


def test_reading_a_result_for_the_webhook_does_not_hold_up_other_jobs(tmp_path: Path, monkeypatch: Any) -> None:
    from llem.measure import result as result_module
    from llem.notify import Notifier

    rig = make_rig(tmp_path, one_key(2))
    notifier = Notifier(rig.session.settings.notifications.model_copy(update={"webhook_url": "http://127.0.0.1:9/x"}),
                        "policy")  # fmt: skip
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(notifier.sender, "submit", sent.append)
    rig.session.notifier = notifier
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / "result.json").write_text("{}")
    reading, release = threading.Event(), threading.Event()

    def slow_read(path: Path) -> Any:  # a large result on a slow file system
        reading.set()
        release.wait(30)
        raise ValueError("not a result")

    monkeypatch.setattr(result_module, "read_result", slow_read)
    finished = threading.Thread(
        target=rig.session.finished, args=(0, job_return(rig.config(0), JobStatus.COMPLETED, None))
    )
    finished.start()
    assert reading.wait(10)
    other = threading.Thread(target=rig.session.started, args=(1,), kwargs={"key": "pytorch"})
    other.start()
    other.join(5)
    try:
        assert not other.is_alive(), "job 1's start waited for job 0's result to be read"
        assert rig.stored_job(1).status == "running"
    finally:
        release.set()
        finished.join(30)
        other.join(30)
    assert rig.stored_job(0).status == "completed"
    assert [(e["job_num"], e["status"], e["figures"]["throughput_tokens_per_s"]) for e in sent] == [(0, "completed", None)]
