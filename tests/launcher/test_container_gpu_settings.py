"""`gpu.*` for container jobs: the launcher applies them on the host, the job in the container only reads them back.

The container is a scripted stand-in (no engine): it records each run request, and, where a test asks, runs the
in-container measure layer in this process against an unprivileged scripted NVML that shares the GPUs' state with
the host's privileged one (tests/fakes/gpu_settings_store.py), as a container shares the host's GPUs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from llem.config import ExperimentConfig
from llem.energy.devices.gpu_restore import RestoreRecords
from llem.launch import protocol, worker
from llem.launch.container import ContainerWorker
from llem.launch.gpus import Gpu
from llem.launch.jobs import Job
from llem.launch.options import ContainerOptions
from llem.launch.pool import WorkerPool, container_spec
from llem.measure import gpu_settings
from llem.measure.gpu_settings import HOST_APPLIED_ENV, GpuSettingsError, read_host_applied, set_host_applied
from llem.measure.harness import MeasurementError, run_experiment
from llem.measure.session import BackendSession
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml
from tests.fakes.gpu_settings_store import FileStore

UUID0 = "GPU-00000000-fake-0000-0000-000000000000"
UUID1 = "GPU-00000001-fake-0000-0000-000000000000"
SET_POWER = "nvmlDeviceSetPowerManagementLimit"


@pytest.fixture(autouse=True)
def _records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLEM_GPU_RESTORE_DIR", str(tmp_path / "restore"))
    monkeypatch.setattr("llem.launch.pool.remove_leftovers", lambda *args: [])  # no engine to ask
    monkeypatch.setattr(gpu_settings, "_HOST_APPLIED", {})


def _gpus(store: FileStore, n: int, *, privileged: bool) -> FakeNvml:
    """The node's GPUs as one process sees them; every process's fake shares `store`."""
    return FakeNvml([FakeGpu() for _ in range(n)], privileged=privileged, store=store)


def _experiment(gpu: dict[str, Any] | None = None) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "model": {"name": "builtin:tiny"}, "num_input_prompts": 2, "max_input_tokens": 16, "max_output_tokens": 3,
        "warmup": {"num_prompts": 0}, "baseline": {"enabled": False},
        "measure": {"min_window_seconds": 0.0, "phase_split": False},
        "backend": {"name": "pytorch", "batch_size": 2}, "gpu": gpu or {},
    })  # fmt: skip


def _config(tmp_path: Path, num: int, experiment: ExperimentConfig) -> DictConfig:
    """The job's composed config, as its worker receives it."""
    sweep = tmp_path / "sweep"
    return OmegaConf.create({**experiment.model_dump(mode="json"),
                             "hydra": {"job": {"num": num, "name": "llem"},
                                       "sweep": {"dir": str(sweep), "subdir": str(num)}}})  # fmt: skip


class Reporter:
    """A JobReporter that keeps each job's outcome."""

    settings = None
    records = False

    def __init__(self) -> None:
        self.returns: dict[int, JobReturn] = {}

    def started(self, job_num: int, **kw: Any) -> int:
        return 1

    def finished(self, job_num: int, ret: JobReturn, **kw: Any) -> dict[str, Any]:
        self.returns[job_num] = ret
        return {}

    def placed(self, *a: Any, **kw: Any) -> None: ...
    def interrupted(self, *a: Any) -> None: ...
    def event(self, **kw: Any) -> None: ...
    def say(self, message: str) -> None: ...
    def gap(self, *a: Any, **kw: Any) -> None: ...


class FakeContainer(ContainerWorker):
    """A container worker without an engine: `start`/`stop` flip a flag, `request` hands each run to `inside`."""

    def __init__(self, key: str, socket_dir: Path, spec: Any, timeline: list[Any],
                 inside: Callable[[dict[str, Any]], None]) -> None:  # fmt: skip
        super().__init__(key, socket_dir, {}, spec)
        self.timeline, self.inside, self.alive = timeline, inside, False
        self.runs: list[dict[str, Any]] = []

    @property
    def running(self) -> bool:
        return self.alive

    def start(self) -> None:
        self.starts += 1
        self.alive = True

    def kill(self) -> None:
        self.alive = False

    def stop(self) -> None:
        self.alive = False
        self.timeline.append(("stop", self.key))

    def request(self, message: dict[str, Any], timeout: Any = None, while_waiting: Any = None) -> dict[str, Any]:
        config = protocol.unpack(message["config"])
        self.runs.append(message)
        self.timeline.append(("run", int(config.hydra.job.num)))
        self.inside(message)
        return {"ok": True, "job_return": protocol.pack(JobReturn(status=JobStatus.COMPLETED, _return_value=None))}


def _pool(tmp_path: Path, host: FakeNvml, timeline: list[Any], inside: Callable[[dict[str, Any]], None],
          **options: Any) -> tuple[WorkerPool, dict[str, FakeContainer]]:  # fmt: skip
    opts = ContainerOptions(engine="podman", images={"pytorch": "llem-pytorch:test"}, gpus="all", **options)
    pool = WorkerPool("container", opts, tmp_path / "sweep", nvml=host)
    made: dict[str, FakeContainer] = {}

    def make(key: str) -> FakeContainer:
        route, gpus = pool.pins.get(key, (key, None))
        spec = container_spec(opts, route, pool.sweep_dir, pool.socket_dir, gpus)
        made[key] = FakeContainer(key, pool.socket_dir, spec, timeline, inside)
        return made[key]

    pool.make_worker = make  # type: ignore[method-assign]
    pool.attach(Reporter())  # type: ignore[arg-type]
    return pool, made


def _run(pool: WorkerPool, tmp_path: Path, num: int, gpu: dict[str, Any] | None, key: str | None = None) -> JobReturn:
    experiment = _experiment(gpu)
    job = Job(num=num, overrides=(), experiment=experiment)
    return pool.run_job(job, _config(tmp_path, num, experiment), None, SimpleNamespace(callbacks=None), key=key)


def _power(store: FileStore, uuid: str = UUID0) -> int:
    return int(store.state()[uuid]["power_limit_mw"])


def test_the_host_applies_each_jobs_settings_before_it_runs_keeps_equal_ones_and_restores_at_the_end(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path / "gpus")
    host = _gpus(store, 1, privileged=True)
    timeline: list[Any] = []
    seen: list[tuple[int, Any]] = []  # (power limit in force, what the job was told) as each job starts

    def inside(message: dict[str, Any]) -> None:
        seen.append((_power(store), message["gpu_settings"]))
        records = RestoreRecords().all()  # written before the change, owned by the launcher (this process)
        if message["gpu_settings"] is None:
            assert records == []
        else:
            assert [(r.uuid, r.original_power_limit_mw, r.pid) for r in records] == [(UUID0, 700_000, os.getpid())]

    pool, made = _pool(tmp_path, host, timeline, inside)
    statuses = [_run(pool, tmp_path, 0, {"power_limit_w": 300}).status,
                _run(pool, tmp_path, 1, {"power_limit_w": 300}).status,
                _run(pool, tmp_path, 2, {"power_limit_w": 450}).status]  # fmt: skip
    assert statuses == [JobStatus.COMPLETED] * 3
    unset = _run(pool, tmp_path, 3, None)
    refused = _run(pool, tmp_path, 4, {"power_limit_w": 900})
    _run(pool, tmp_path, 5, {"power_limit_w": 250})
    assert made["pytorch"].spec.env[HOST_APPLIED_ENV] == "1"  # the worker never changes them itself

    applied = {UUID0: {"power_limit_w": 300}}
    assert seen[:3] == [(300_000, {"applied": applied, "changed": True}),
                        (300_000, {"applied": applied, "changed": False}),  # equal values: kept
                        (450_000, {"applied": {UUID0: {"power_limit_w": 450}}, "changed": True})]  # fmt: skip
    assert unset.status == JobStatus.COMPLETED and seen[3] == (700_000, None)  # a job that sets none: originals
    assert refused.status == JobStatus.FAILED and "gpu.power_limit_w=900 is outside the limits" in str(
        refused._return_value)  # fmt: skip
    assert [t for t in timeline if t[0] == "run"] == [("run", n) for n in (0, 1, 2, 3, 5)]  # 4 never reached it
    assert [(fn, args) for fn, _, args in host.settings_log] == [
        (SET_POWER, (300_000,)), (SET_POWER, (450_000,)), (SET_POWER, (700_000,)), (SET_POWER, (250_000,))]

    pool.close()  # the campaign ends: the worker stops, then its GPU gets its original value back
    assert timeline[-1] == ("stop", "pytorch") and host.settings_log[-1] == (SET_POWER, UUID0, (700_000,))
    assert _power(store) == 700_000 and RestoreRecords().all() == []


def test_side_by_side_containers_each_restore_only_their_own_gpu_when_they_stop(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "gpus")
    host = _gpus(store, 2, privileged=True)
    timeline: list[Any] = []
    told: dict[str, Any] = {}
    pool, made = _pool(tmp_path, host, timeline, lambda m: told.update(last=m["gpu_settings"]), parallel=True)
    pool.pin("pytorch@0", "pytorch", (Gpu(0, UUID0),))
    pool.pin("pytorch@1", "pytorch", (Gpu(1, UUID1),))
    _run(pool, tmp_path, 0, {"power_limit_w": 300}, key="pytorch@0")
    _run(pool, tmp_path, 1, {"power_limit_w": 400}, key="pytorch@1")
    assert told["last"] == {"applied": {UUID1: {"power_limit_w": 400}}, "changed": True}  # its own GPU, as cuda:0
    assert made["pytorch@1"].spec.gpus == [1]
    _run(pool, tmp_path, 2, None, key="pytorch@0")  # sets nothing: GPU 0's originals, GPU 1 left to its job
    assert (_power(store, UUID0), _power(store, UUID1)) == (700_000, 400_000)
    _run(pool, tmp_path, 3, {"power_limit_w": 350}, key="pytorch@0")
    pool.evict("pytorch@1")  # its worker stops: its GPU, and only that one, goes back
    assert timeline[-1] == ("stop", "pytorch@1")
    assert (_power(store, UUID0), _power(store, UUID1)) == (350_000, 700_000)
    assert [r.uuid for r in RestoreRecords().all()] == [UUID0]
    pool.close()
    assert (_power(store, UUID0), _power(store, UUID1)) == (700_000, 700_000) and RestoreRecords().all() == []


def test_preflight_checks_container_jobs_on_the_host_instead_of_refusing_them(tmp_path: Path) -> None:
    from llem.campaign.gpu_preflight import gpu_settings_problems
    from llem.campaign.preflight import Workers

    jobs = [(0, {"model": {"name": "builtin:tiny"}, "gpu": {"power_limit_w": 300}}),
            (1, {"model": {"name": "builtin:tiny"}, "gpu": {"power_limit_w": 900}})]  # fmt: skip
    store = FileStore(tmp_path / "gpus")
    containers = Workers("container", gpu_count=1)
    problems = gpu_settings_problems(jobs, workers=containers, nvml=_gpus(store, 1, privileged=True))
    assert set(problems) == {1} and "gpu.power_limit_w=900 is outside the limits" in problems[1]
    unprivileged = gpu_settings_problems(jobs, workers=containers, nvml=_gpus(store, 1, privileged=False))
    assert set(unprivileged) == {0, 1} and "CAP_SYS_ADMIN" in unprivileged[0]


# ------------------------------------------------------------------------------------------- inside the container
def test_inside_a_job_that_sets_gpu_settings_without_the_hosts_facts_fails_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOST_APPLIED_ENV, "1")
    inside = _gpus(FileStore(tmp_path / "gpus"), 1, privileged=True)  # even a privileged container sets nothing
    with pytest.raises(GpuSettingsError, match="applied no GPU settings on the host"):
        read_host_applied(_experiment({"power_limit_w": 300}), inside)
    set_host_applied({"applied": {UUID1: {"power_limit_w": 300}}, "changed": True})
    with pytest.raises(GpuSettingsError, match=f"applied them on {UUID1}, but this job runs on {UUID0}"):
        read_host_applied(_experiment({"power_limit_w": 300}), inside)
    assert inside.settings_log == [] and RestoreRecords().all() == []
    with pytest.raises(MeasurementError, match="applied no GPU settings on the host"):
        run_experiment(_experiment({"power_limit_w": 300}), tmp_path, BackendSession(), nvml_module=inside)
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_result_json_records_the_hosts_values_read_back_inside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole hand-over: the pool applies on the host, the worker's run handler passes the facts on, the
    harness (with the container's environment and an unprivileged NVML) reads back and writes result.json."""
    store = FileStore(tmp_path / "gpus")
    host = _gpus(store, 1, privileged=True)
    container_nvml = _gpus(store, 1, privileged=False)
    session = BackendSession()
    gpu = {"power_limit_w": 300, "sm_clock_mhz": 1400, "clock_rounding": "nearest"}

    def inside(message: dict[str, Any]) -> None:
        worker._set_host_gpu_settings(message)  # what the worker's run handler does with the request
        num = int(protocol.unpack(message["config"]).hydra.job.num)
        with monkeypatch.context() as m:
            m.setenv(HOST_APPLIED_ENV, "1")  # from the container's environment
            run_experiment(_experiment(gpu), tmp_path / str(num), session, nvml_module=container_nvml)

    pool, _ = _pool(tmp_path, host, [], inside)
    try:
        assert _run(pool, tmp_path, 0, gpu).status == JobStatus.COMPLETED
        assert _run(pool, tmp_path, 1, gpu).status == JobStatus.COMPLETED
    finally:
        session.release()
        pool.close()
    first, second = (json.loads((tmp_path / n / "result.json").read_text())["gpu_settings"]["gpu0"] for n in "01")
    assert first["uuid"] == UUID0 and (first["changed_for_job"], second["changed_for_job"]) == (True, False)
    assert first["power_limit_w"] == {"requested": 300, "applied": 300, "effective": 300.0, "default": 700.0,
                                      "effective_source": "enforced power limit read after setting it"}
    sm = first["sm_clock_mhz"]
    assert (sm["requested"], sm["applied"], sm["effective"]) == (1400, 1395, 1395.0)  # rounded on the host
    assert container_nvml.settings_log == []  # nothing was set from inside
    assert [(fn, args) for fn, _, args in host.settings_log][:2] == [(SET_POWER, (300_000,)),
                                                                      ("nvmlDeviceSetGpuLockedClocks", (1395, 1395))]
    assert _power(store) == 700_000 and store.state()[UUID0]["sm_locked_mhz"] is None  # restored at the end


# ------------------------------------------------------------------------------------------- a real container
@pytest.mark.container
@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_a_podman_campaign_sets_gpu_settings_from_the_host_and_records_them_inside(tmp_path: Path) -> None:
    """The offline CPU image under podman; host and container each build a scripted NVML over one state file
    (mounted with the launch directory). The container's NVML refuses every change, as without privilege."""
    import subprocess
    import sys

    from llem.plan.manifest import read_manifest
    from tests.containers import image

    image.skip_unless_engine()
    ref = image.test_image()
    repo = Path(__file__).resolve().parents[2]
    state, sweep = tmp_path / "gpus", tmp_path / "sweep"
    factory = "tests.launcher.fake_gpu_settings_env:nvml"
    env = {**os.environ, "LLEM_NVML_FACTORY": factory, "LLEM_FAKE_GPU_STATE": str(state),
           "LLEM_GPU_RESTORE_DIR": str(tmp_path / "restore"), "PYTHONPATH": str(repo)}  # fmt: skip
    cmd = [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", "num_input_prompts=2", "max_output_tokens=3",
           "max_input_tokens=16", "warmup.num_prompts=0", "baseline.enabled=false", "measure.min_window_seconds=0",
           "measure.phase_split=false", "campaign.execution.config_gap_seconds=0", "campaign.execution.cycles=1",
           "campaign.execution.warmup_prompts=0",
           "gpu.power_limit_w=300,null", "hydra/launcher=llem_container", f"hydra.launcher.engine={image.ENGINE}",
           f"hydra.launcher.images.pytorch={ref}", "hydra.launcher.network=none",
           f"hydra.launcher.mounts=['{repo / 'tests'}:/llemtests/tests:ro']",
           "+hydra.launcher.env.PYTHONPATH=/llemtests",
           f"+hydra.launcher.env.LLEM_NVML_FACTORY='{factory}'", f"+hydra.launcher.env.LLEM_FAKE_GPU_STATE='{state}'",
           "+hydra.launcher.env.LLEM_FAKE_GPU_UNPRIVILEGED='1'"]  # fmt: skip
    with subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-3000:]
    jobs = read_manifest(sweep / ".state" / "campaign_manifest.json").jobs
    assert [j.status for j in jobs] == ["completed", "completed"]
    first, second = (json.loads(Path(j.result_path or "").read_text())["gpu_settings"] for j in jobs)
    power = first["gpu0"]["power_limit_w"]
    assert (power["requested"], power["effective"], power["default"]) == (300, 300.0, 700.0)
    assert first["gpu0"]["uuid"] == UUID0 and first["gpu0"]["changed_for_job"] is True and second is None
    store = FileStore(state)
    # every change came from the launcher (its preflight probe re-sets the current limit first), none from inside
    assert [(c["pid"], c["args"]) for c in store.calls()] == [(proc.pid, [a]) for a in (700_000, 300_000, 700_000)]
    assert _power(store) == 700_000 and RestoreRecords(tmp_path / "restore").all() == []
