"""The SLURM launcher at its edges, without SLURM: jobs reported as their group reports them, a resumed run that
re-attaches to a live SLURM job, a partition without GPUs, submission errors, the campaign's pacing inside a
group, the container's GPUs by UUID, and the state's journal mode on network file systems."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hydra.core.utils import JobReturn, JobStatus

from llem.launch.outcome import job_outcome
from llem.launch.slurm import job as job_module
from llem.launch.slurm.cluster import partition_has_gpus
from llem.launch.slurm.container import container_argv
from llem.launch.slurm.gpus import SlurmGpuError, gpu_uuids_by_minor, job_gpu_uuids
from llem.launch.slurm.groups import group_jobs
from llem.launch.slurm.job import GroupJob, JobOutcome, read_outcome, record_submission, write_outcome
from llem.launch.slurm.launcher import SlurmLaunch, live_job_dirs
from llem.launch.slurm.options import SlurmContainerOptions, SlurmOptions
from llem.launch.slurm.pacing import GroupPacing, HealthPolicy
from tests.slurm.test_slurm_units import (
    _config,
    _fake_run,
    _FakeExecutor,
    _group,
    _no_slurm,
    _Proc,
    _Session,
    _spec,
)


def _slurm(states: dict[str, str] | None = None, gres: str | None = None, calls: list[list[str]] | None = None) -> Any:
    """SLURM's commands as a cluster answers them: squeue (`states`), sinfo (`gres` of the default partition),
    scancel (ends the job)."""
    states = dict(states or {})

    def run(argv: list[str], **kw: Any) -> _Proc:
        if calls is not None:
            calls.append(list(argv))
        if argv[0] == "squeue":
            ids = argv[argv.index("-j") + 1].split(",")
            return _Proc(0, "".join(f"{i}|{states[i]}\n" for i in ids if i in states))
        if argv[0] == "sinfo":
            return _Proc(1, err="no sinfo") if gres is None else _Proc(0, f"debug*|{gres}\n")
        if argv[0] == "scancel":
            states[argv[1]] = "CANCELLED"
            return _Proc(0)
        raise AssertionError(argv)

    return run


def _context(tmp_path: Path, **config: Any) -> Any:
    class Loader:
        def load_sweep_config(self, master: Any, overrides: list[str]) -> Any:
            return _config(tmp_path, 0, **config)

    return type("Ctx", (), {"config_loader": Loader(), "callbacks": None})()


# ---------------------------------------------------------------- outcomes as they happen
class _SlowJob:
    """A SLURM job whose group has ended job 0, is running job 1, and returns only at the next poll."""

    def __init__(self, job_id: str, fn: GroupJob, folder: Path) -> None:
        self.job_id, self.fn = job_id, fn
        self.paths = type("P", (), {"result_pickle": folder / f"{job_id}_result.pkl"})()

    def result(self) -> Any:
        return self.fn()


def test_each_job_is_recorded_as_its_group_reports_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GroupJob, "_run_one", _fake_run([]))
    monkeypatch.setenv("SLURM_JOB_ID", "100")
    session = _Session()
    jobs: list[_SlowJob] = []

    class Executor(_FakeExecutor):
        def submit(self, fn: Any) -> _SlowJob:
            jobs.append(_SlowJob("100", fn, tmp_path))
            return jobs[-1]

    seen: list[list[tuple[str, int, Any]]] = []
    polls: list[float] = []

    def poll_sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:  # the group, on its node: job 0 ended, job 1 began
            spec0, spec1 = jobs[0].fn.jobs[:2]
            placement = {"slurm_job_id": "100", "node": "node7"}
            ret = JobReturn(overrides=spec0.overrides, status=JobStatus.COMPLETED, _return_value={"n": 0},
                            hydra_cfg=job_module._with_output_dir(spec0))
            write_outcome(str(tmp_path), JobOutcome(spec0.job_num, ret, **placement))
            job_module.write_placement(spec1.job_dir, placement)
            return
        seen.append(list(session.lifecycle))  # what the campaign knew after the next poll
        jobs[0].paths.result_pickle.write_text("x")  # then the whole group returns

    run = SlurmLaunch(SlurmOptions(poll_interval_s=0), _config(tmp_path, 0), _context(tmp_path, backend={
        "device": "cpu"}), lambda cfg: None, session=session, executor_factory=lambda: Executor(tmp_path),
        sleep=poll_sleep, run=_slurm({"100": "RUNNING"}))
    returns = run.run([["a"], ["b"], ["c"]], 0)
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 3
    before_the_group_returned = seen[0]
    assert ("finished", 0, JobStatus.COMPLETED) in before_the_group_returned
    assert ("started", 1, {"slurm_job_id": "100", "node": "node7"}) in before_the_group_returned
    assert not any(kind == "finished" and num == 1 for kind, num, _ in before_the_group_returned)
    # in the end every job is started once and finished once
    assert sorted((k, n) for k, n, _ in session.lifecycle) == [("finished", 0), ("finished", 1), ("finished", 2),
                                                               ("started", 0), ("started", 1), ("started", 2)]


def test_a_group_writes_each_outcome_as_the_job_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GroupJob, "_run_one", _fake_run([]))
    monkeypatch.setenv("SLURM_JOB_ID", "55")
    outcomes = _group(tmp_path, [3, 4])()
    assert [read_outcome(str(tmp_path), "55", n).job_return.status for n in (3, 4)] == [JobStatus.COMPLETED] * 2
    assert read_outcome(str(tmp_path), "56", 3) is None  # another SLURM job's outcome is never taken for this one
    assert [o.job_num for o in outcomes] == [3, 4]


# ---------------------------------------------------------------- resume after the orchestrator died
class _Attached:
    def __init__(self, job_id: str, outcomes: list[JobOutcome], folder: Path) -> None:
        self.job_id, self.outcomes = job_id, outcomes
        self.paths = type("P", (), {"result_pickle": folder / f"{job_id}_0_result.pkl"})()
        self.paths.result_pickle.write_text("x")

    def result(self) -> list[JobOutcome]:
        return self.outcomes


def test_a_resumed_run_reattaches_to_the_live_slurm_job_instead_of_submitting_again(tmp_path: Path) -> None:
    specs = [_spec(tmp_path, n, backend={"device": "cpu"}) for n in (0, 1)]
    record_submission(str(tmp_path), "555", {s.job_num: s.job_dir for s in specs})  # by the killed orchestrator
    outcomes = [JobOutcome(s.job_num, JobReturn(overrides=s.overrides, status=JobStatus.COMPLETED,
                                                hydra_cfg=job_module._with_output_dir(s)), "555", "node1")
                for s in specs]
    executor = _FakeExecutor(tmp_path)
    attached: list[str] = []

    def attach(slurm_id: str) -> _Attached:
        attached.append(slurm_id)
        return _Attached(slurm_id, outcomes, tmp_path)

    session = _Session()
    run = SlurmLaunch(SlurmOptions(poll_interval_s=0), _config(tmp_path, 0), _context(tmp_path, backend={
        "device": "cpu"}), lambda cfg: None, session=session, executor_factory=lambda: executor,
        sleep=lambda s: None, run=_slurm({"555": "RUNNING"}), attach_job=attach)
    returns = run.run([["a"], ["b"]], 0)
    assert executor.jobs == [] and attached == ["555"]  # nothing submitted: the live SLURM job runs them
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 2
    assert any("555" in line and "waiting for it" in line for line in session.said)


def test_a_live_slurm_job_without_its_submitit_files_is_cancelled_before_the_jobs_run_again(tmp_path: Path) -> None:
    specs = [_spec(tmp_path, 0, backend={"device": "cpu"})]
    record_submission(str(tmp_path), "556", {0: specs[0].job_dir})
    calls: list[list[str]] = []

    class Executor(_FakeExecutor):
        def submit(self, fn: Any) -> Any:
            calls.append(["sbatch"])
            return super().submit(fn)

    executor = Executor(tmp_path)
    opts = SlurmOptions(poll_interval_s=0, folder=str(tmp_path / "gone"))
    run = SlurmLaunch(opts, _config(tmp_path, 0), _context(tmp_path, backend={"device": "cpu"}), lambda cfg: None,
                      session=_Session(), executor_factory=lambda: executor, sleep=lambda s: None,
                      run=_slurm({"556": "PENDING"}, calls=calls))
    run.run([["a"]], 0)
    assert ["scancel", "556"] in calls and len(executor.jobs) == 1
    assert calls.index(["scancel", "556"]) < calls.index(["sbatch"])  # cancelled before the jobs are queued again


def test_no_job_is_submitted_again_when_slurm_cannot_say_whether_it_still_runs(tmp_path: Path) -> None:
    spec = _spec(tmp_path, 0, backend={"device": "cpu"})
    record_submission(str(tmp_path), "557", {0: spec.job_dir})
    executor = _FakeExecutor(tmp_path)
    run = SlurmLaunch(SlurmOptions(poll_interval_s=0), _config(tmp_path, 0), _context(tmp_path, backend={
        "device": "cpu"}), lambda cfg: None, session=_Session(), executor_factory=lambda: executor,
        sleep=lambda s: None, run=_no_slurm)
    (ret,) = run.run([["a"]], 0)
    assert executor.jobs == [] and ret.status == JobStatus.FAILED and "not submitted again" in str(ret._return_value)


def test_temp_files_of_job_dirs_a_live_slurm_job_writes_are_not_stale(tmp_path: Path) -> None:
    for num in (0, 1, 2):
        (tmp_path / str(num)).mkdir()
    record_submission(str(tmp_path), "600", {0: str(tmp_path / "0")})
    record_submission(str(tmp_path), "601", {1: str(tmp_path / "1")})
    job_module.write_placement(str(tmp_path / "2"), {"slurm_job_id": "602", "node": "n"})
    run = _slurm({"600": "RUNNING", "601": "COMPLETED", "602": "PENDING"})
    assert live_job_dirs(tmp_path, run=run) == {tmp_path / "0", tmp_path / "2"}
    assert live_job_dirs(tmp_path, run=_no_slurm) == {tmp_path / "0", tmp_path / "1", tmp_path / "2"}


# ---------------------------------------------------------------- a partition without GPUs
def test_sinfo_says_whether_a_partition_has_gpus() -> None:
    out = "debug*|(null)\ngpu|gpu:a100:4(S:0-1)\ngpu|(null)\nmix|mps:100,gpu:2\n"
    run = lambda argv, **kw: _Proc(0, out)  # noqa: E731
    assert partition_has_gpus(None, run=run) == ("debug", False)
    assert partition_has_gpus("gpu", run=run) == ("gpu", True)
    assert partition_has_gpus("mix", run=run) == ("mix", True)
    assert partition_has_gpus("other", run=run) is None
    assert partition_has_gpus(None, run=_no_slurm) is None


def test_on_a_partition_without_gpus_auto_jobs_run_on_cpu_and_gpu_jobs_fail_once_before_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GroupJob, "_run_one", _fake_run([]))
    devices = {"auto": "auto", "cuda": "cuda"}

    class Loader:
        def load_sweep_config(self, master: Any, overrides: list[str]) -> Any:
            return _config(tmp_path, 0, backend={"device": devices[overrides[0]]})

    context = type("Ctx", (), {"config_loader": Loader(), "callbacks": None})()
    executor = _FakeExecutor(tmp_path)
    session = _Session()
    run = SlurmLaunch(SlurmOptions(poll_interval_s=0), _config(tmp_path, 0), context, lambda cfg: None,
                      session=session, executor_factory=lambda: executor, sleep=lambda s: None,
                      run=_slurm(gres="(null)"))
    auto, cuda = run.run([["auto"], ["cuda"]], 0)
    assert auto.status == JobStatus.COMPLETED
    assert [p.get("gpus_per_task") for p in executor.params] == [None]  # one submission, asking for no GPU
    outcome = job_outcome(cuda)
    assert outcome["status"] == "failed" and outcome["retryable"] is False
    assert "partition 'debug' has no GPUs" in outcome["error"] and "backend.device=cpu" in outcome["error"]
    assert any("no GPUs" in line and "[0]" in line for line in session.said)
    # failed once: started and finished once, before anything was queued
    assert [(k, n) for k, n, _ in session.lifecycle if n == 1] == [("started", 1), ("finished", 1)]


def test_a_submission_error_is_never_retried(tmp_path: Path) -> None:
    class Refusing(_FakeExecutor):
        def submit(self, fn: Any) -> Any:
            raise RuntimeError("sbatch: error: Invalid generic resource (gres) specification")

    executor = Refusing(tmp_path)
    run = SlurmLaunch(SlurmOptions(poll_interval_s=0), _config(tmp_path, 0), _context(tmp_path), lambda cfg: None,
                      session=_Session(), executor_factory=lambda: executor, sleep=lambda s: None, run=_no_slurm)
    (ret,) = run.run([["a"]], 0)
    outcome = job_outcome(ret)
    assert outcome["status"] == "failed" and outcome["retryable"] is False
    assert "Invalid generic resource" in outcome["error"]


# ---------------------------------------------------------------- the campaign's pacing inside a group
def test_a_group_keeps_config_and_cycle_gaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GroupJob, "_run_one", _fake_run([]))
    slept: list[float] = []
    monkeypatch.setattr(job_module.time, "sleep", slept.append)
    group = _group(tmp_path, [0, 1, 2, 3], pacing=GroupPacing(config_gap_s=2.0, cycle_gap_s=30.0))
    for spec, cycle in zip(group.jobs, (0, 0, 1, 1), strict=True):
        spec.period = (0, cycle)
    group()
    assert slept == [2.0, 30.0, 2.0]


def test_a_job_past_its_time_limit_fails_and_the_group_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hydra.core.utils as hydra_utils

    def slow_then_fast(**kw: Any) -> JobReturn:
        if kw["config"].hydra.job.num == 0:
            time.sleep(30)
        return JobReturn(overrides=[], status=JobStatus.COMPLETED)

    monkeypatch.setattr(hydra_utils, "run_job", slow_then_fast)
    released: list[bool] = []
    monkeypatch.setattr(job_module, "_release_model", lambda: released.append(True))
    started = time.monotonic()
    outcomes = _group(tmp_path, [0, 1], pacing=GroupPacing(timeout_s=0.5))()
    assert time.monotonic() - started < 10
    assert [o.job_return.status for o in outcomes] == [JobStatus.FAILED, JobStatus.COMPLETED]
    assert "timed out after 0.5 s" in str(outcomes[0].job_return._return_value) and released


def test_an_unhealthy_check_releases_the_model_and_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llem.launch.worker as worker

    monkeypatch.setattr(GroupJob, "_run_one", _fake_run([]))
    monkeypatch.setattr(worker, "_health", lambda: {"devices": {"GPU 0": {"used_pct": 97.0}}})
    released: list[bool] = []
    monkeypatch.setattr(job_module, "_release_model", lambda: released.append(True))
    health = HealthPolicy(max_restarts=1)
    outcomes = _group(tmp_path, [0, 1], pacing=GroupPacing(health=health))
    for spec, cycle in zip(outcomes.jobs, (0, 1), strict=True):
        spec.period = (0, cycle)
    result = outcomes()
    kinds = [e["kind"] for o in result for e in o.events]
    assert kinds == ["health_check", "worker_restart", "health_check", "worker_disabled"]
    assert len(released) == 1
    assert result[0].job_return.status == JobStatus.COMPLETED
    assert result[1].job_return.status == JobStatus.FAILED and "max_restarts (1) reached" in str(
        result[1].job_return._return_value)


def test_groups_take_cycle_gaps_timeouts_and_health_checks_from_the_campaign(tmp_path: Path) -> None:
    from llem.config import CampaignSettings

    specs = [_spec(tmp_path, n) for n in range(2)]
    session = _Session()
    session.settings = CampaignSettings.model_validate({  # type: ignore[attr-defined]
        "execution": {"config_gap_seconds": 1, "cycle_gap_seconds": 7, "experiment_timeout_seconds": 90},
        "health_check": {"enabled": True, "interval_experiments": 2, "gpu_memory_threshold_pct": 80},
    })
    context = type("Ctx", (), {"config_loader": None, "callbacks": None})()
    run = SlurmLaunch(SlurmOptions(), _config(tmp_path, 0), context, lambda cfg: None, session=session)
    pacing = run.group_job(group_jobs(specs)[0]).pacing
    assert (pacing.config_gap_s, pacing.cycle_gap_s, pacing.timeout_s) == (1.0, 7.0, 90.0)
    assert pacing.health == HealthPolicy(interval_experiments=2, gpu_memory_threshold_pct=80.0)


# ---------------------------------------------------------------- the container's GPUs
def test_a_container_gets_only_the_gpus_slurm_gave_the_job_by_uuid() -> None:
    table = {0: "GPU-a", 1: "GPU-b", 2: "GPU-c", 3: "GPU-d"}
    environ = {"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "9"}
    uuids = job_gpu_uuids(environ, by_minor=lambda: table)
    assert uuids == ["GPU-c", "GPU-d"]
    argv = container_argv(SlurmContainerOptions(image="llem:1"), image="llem:1", command=["python"], mounts=[],
                          workdir="/w", gpus=2, env={}, passthrough=[], environ=environ, gpu_uuids=uuids)
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "--device"]
    assert devices == ["nvidia.com/gpu=GPU-c", "nvidia.com/gpu=GPU-d"]
    assert "nvidia.com/gpu=all" not in argv
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert "CUDA_VISIBLE_DEVICES=GPU-c,GPU-d" in envs and "CUDA_VISIBLE_DEVICES" not in envs  # not SLURM's indices
    with pytest.raises(ValueError, match="GPU UUIDs"):
        container_argv(SlurmContainerOptions(image="i"), image="i", command=[], mounts=[], workdir="/", gpus=1,
                       env={}, passthrough=[], environ=environ)
    with pytest.raises(SlurmGpuError, match="SLURM named none"):
        job_gpu_uuids({"CUDA_VISIBLE_DEVICES": "0"}, by_minor=lambda: table)
    with pytest.raises(SlurmGpuError, match=r"minor number\(s\) \[3\]"):
        job_gpu_uuids({"SLURM_JOB_GPUS": "3"}, by_minor=lambda: {0: "GPU-a"})


def test_gpus_the_job_may_not_open_are_left_out_of_the_uuid_table() -> None:
    class Refused(Exception):
        pass

    class Nvml:
        NVMLError = Refused

        def nvmlInit(self) -> None: ...
        def nvmlShutdown(self) -> None: ...
        def nvmlDeviceGetCount(self) -> int:
            return 3

        def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
            if i == 1:
                raise Refused("Insufficient Permissions")
            return i

        def nvmlDeviceGetMinorNumber(self, handle: int) -> int:
            return handle + 4

        def nvmlDeviceGetUUID(self, handle: int) -> bytes:
            return f"GPU-{handle}".encode()

    assert gpu_uuids_by_minor(Nvml()) == {4: "GPU-0", 6: "GPU-2"}


def test_a_gpu_group_in_a_container_does_not_start_without_slurms_gpu_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the container must not start"))
    group = _group(tmp_path, [0], container=SlurmContainerOptions(image="llem:1"), image="llem:1", gpus=1)
    (outcome,) = group()
    assert outcome.job_return.status == JobStatus.FAILED and "SLURM named none" in str(outcome.job_return._return_value)


# ---------------------------------------------------------------- the state on a cluster file system
def test_the_state_uses_the_rollback_journal_on_a_network_file_system(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from llem.campaign import journal
    from llem.campaign.state import CampaignState

    mounts = f"/dev/sda1 / ext4 rw 0 0\nnas:/export {tmp_path} nfs4 rw 0 0\n"
    assert journal.journal_mode(tmp_path / "sweep" / ".state", mounts) == "DELETE"
    assert journal.journal_mode(Path("/var/tmp"), mounts) == "WAL"
    monkeypatch.setattr(journal, "MOUNTS", tmp_path / "mounts")
    (tmp_path / "mounts").write_text(mounts)
    state = CampaignState(tmp_path / "sweep" / ".state" / "campaign_manifest.json")
    db = state._connect()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    state.close()
    assert sqlite3.connect(tmp_path / "sweep" / ".state" / "campaign.db").execute(
        "PRAGMA journal_mode").fetchone()[0] == "delete"
