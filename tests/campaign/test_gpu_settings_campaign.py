"""GPU power limit and clocks in real campaigns: preflight refusals, restore after kill -9, parallel jobs, doctor.

Every process (orchestrator, workers, doctor) builds its own scripted NVML; their GPUs share one state file
and one call log (tests/fakes/gpu_settings_store.py), as processes share a real GPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llem.energy.devices.gpu_restore import RestoreRecord, RestoreRecords
from llem.launch.slurm.options import SlurmOptions
from llem.campaign.gpu_preflight import gpu_settings_problems
from llem.plan.manifest import read_manifest
from tests.campaign.helpers import FAST, REPO
from tests.fakes.gpu_settings_store import FileStore

UUID0 = "GPU-00000000-fake-0000-0000-000000000000"
UUID1 = "GPU-00000001-fake-0000-0000-000000000000"
SET_POWER = "nvmlDeviceSetPowerManagementLimit"
QUICK = [*FAST, "campaign.execution.config_gap_seconds=0", "measure.min_window_seconds=0", "measure.phase_split=false"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "LLEM_NVML_FACTORY": "tests.launcher.fake_gpu_settings_env:nvml",
            "LLEM_FAKE_GPU_STATE": str(tmp_path / "gpus"), "LLEM_GPU_RESTORE_DIR": str(tmp_path / "restore"),
            "LLEM_GPU_LOCK_DIR": str(tmp_path / "gpu-locks"), "PYTHONPATH": str(REPO), **extra}  # fmt: skip


def _campaign(sweep: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", *QUICK, *args]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run to the end; also return its PID (the orchestrator's, to tell its calls from its workers')."""
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), proc.pid


def _power(store: FileStore, uuid: str = UUID0) -> int | None:
    state = store.state().get(uuid)
    return None if state is None else state["power_limit_mw"]


def _results(sweep: Path) -> dict[int, Any]:
    manifest = read_manifest(sweep / ".state" / "campaign_manifest.json")
    return {j.job_num: (j.status, j.error, json.loads(Path(j.result_path).read_text()) if j.status == "completed"
                        and j.result_path else None) for j in manifest.jobs}  # fmt: skip


# ------------------------------------------------------------------------------------------- preflight
@pytest.mark.slow
def test_out_of_range_is_refused_before_anything_runs_and_the_rest_measure_and_restore(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(_campaign(sweep, "gpu.power_limit_w=300,900,null"), cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode != 0  # one job failed
    assert "gpu.power_limit_w=900 is outside the limits of NVIDIA H100 80GB HBM3" in proc.stderr
    jobs = _results(sweep)
    assert jobs[1][0] == "failed" and "preflight: gpu.power_limit_w=900" in jobs[1][1] and "100-700 W" in jobs[1][1]
    assert jobs[0][0] == "completed" and jobs[2][0] == "completed"
    section = jobs[0][2]["gpu_settings"]["gpu0"]["power_limit_w"]
    assert (section["requested"], section["effective"], section["default"]) == (300, 300.0, 700.0)
    assert jobs[2][2]["gpu_settings"] is None  # unset: untouched
    store = FileStore(tmp_path / "gpus")
    worker_sets = [c["args"][0] for c in store.calls() if c["pid"] != proc_pid(store, 0)]
    assert 900_000 not in [c["args"][0] for c in store.calls()]  # never tried on the GPU
    assert worker_sets == [300_000, 700_000]  # set for job 0, restored before job 2 (which sets nothing)
    assert _power(store) == 700_000 and RestoreRecords(tmp_path / "restore").all() == []


def proc_pid(store: FileStore, index: int) -> int:
    """PID of the index-th process that set anything (the orchestrator's permission probe comes first)."""
    return list(dict.fromkeys(c["pid"] for c in store.calls()))[index]


@pytest.mark.slow
def test_without_privilege_the_jobs_that_set_gpu_settings_are_refused_with_the_fix(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(_campaign(sweep, "gpu.sm_clock_mhz=null,1410"), cwd=tmp_path,
                          env=_env(tmp_path, LLEM_FAKE_GPU_UNPRIVILEGED="1"), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    jobs = _results(sweep)
    assert jobs[0][0] == "completed"  # the job that sets nothing runs
    assert jobs[1][0] == "failed" and jobs[1][2] is None
    error = jobs[1][1]
    assert error.startswith("preflight: gpu.sm_clock_mhz set, but no permission to change GPU settings")
    assert "needs root or CAP_SYS_ADMIN" in error and "sudo -E" in error
    assert "cannot run on this machine" in proc.stderr
    assert FileStore(tmp_path / "gpus").calls() == []  # nothing was changed


def test_slurm_refuses_gpu_settings_and_cpu_jobs_are_named() -> None:
    class Launcher:
        def __init__(self, allow: bool) -> None:
            self.options = SlurmOptions(allow_gpu_settings=allow)

    jobs = [(0, {"model": {"name": "builtin:tiny"}, "gpu": {"power_limit_w": 300}}),
            (1, {"model": {"name": "builtin:tiny"}}),
            (2, {"model": {"name": "builtin:tiny"}, "backend": {"name": "pytorch", "device": "cpu"},
                 "gpu": {"mem_clock_mhz": 2619}})]  # fmt: skip
    refused = gpu_settings_problems(jobs, launcher=Launcher(False))
    assert set(refused) == {0, 2}
    assert "hydra.launcher.allow_gpu_settings=true" in refused[0] and refused[0].startswith("gpu.power_limit_w set")
    allowed = gpu_settings_problems(jobs, launcher=Launcher(True))
    assert set(allowed) == {2} and "gpu.mem_clock_mhz set, but this job runs without a GPU (backend.device=cpu)" \
        in allowed[2]  # fmt: skip


@pytest.mark.slow
def test_a_single_run_without_a_gpu_is_refused_naming_the_key(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "llem", f"hydra.run.dir={tmp_path / 'run'}", *QUICK[:4],
                           "backend.device=cpu", "gpu.power_limit_w=300"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1
    assert "llem: gpu.power_limit_w set, but this job runs without a GPU (backend.device=cpu)" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "result.json").exists()


# ------------------------------------------------------------------------------------------- kill -9
def _wait_for_set(store: FileStore, milliwatts: int, proc: subprocess.Popen[str], timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for call in store.calls():
            if call["fn"] == SET_POWER and call["args"] == [milliwatts]:
                return int(call["pid"])
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError("the limit was never set")


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_restored_by_the_next_campaign_and_shown_by_the_doctor(tmp_path: Path) -> None:
    """The whole campaign dies (kill -9 of the orchestrator, its worker going with it) while a job holds a changed
    limit: nothing of that run can restore it, so the doctor shows it and the next campaign restores it first."""
    import psutil

    store = FileStore(tmp_path / "gpus")
    # slow set calls in the worker only (the orchestrator's permission probe also sets): it is killed holding 300 W
    first = subprocess.Popen(_campaign(tmp_path / "a", "gpu.power_limit_w=300", "hydra.sweeper.max_attempts=1",
                                       "+hydra.launcher.env.LLEM_FAKE_GPU_SET_DELAY_S=120"),
                             cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        worker = _wait_for_set(store, 300_000, first)
        assert worker != first.pid
        os.kill(first.pid, signal.SIGKILL)  # mid-job, the worker holding the changed limit
        first.communicate(timeout=180)
        deadline = time.monotonic() + 30  # the worker dies with its launcher (parent-death signal)
        while True:
            try:
                if psutil.Process(worker).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            assert time.monotonic() < deadline, "the worker outlived its launcher"
            time.sleep(0.1)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert _power(store) == 300_000  # nobody restored it
    [record] = RestoreRecords(tmp_path / "restore").all()
    assert record.pid == worker and record.original_power_limit_mw == 700_000 and record.stale

    doctor = subprocess.run([sys.executable, "-m", "llem.doctor", "--json", "--engine", "podman"], cwd=tmp_path,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=120)  # fmt: skip
    checks = {c["item"]: c for c in json.loads(doctor.stdout)}
    shown = checks[f"{UUID0} restore record"]
    assert shown["status"] == "warn" and f"PID {worker}" in shown["detail"] and "700 W" in shown["detail"]
    assert shown["fix"] == "python -m llem.doctor --restore-gpus"
    assert checks[f"{UUID0} power limit and clocks"]["status"] == "ok"
    assert _power(store) == 300_000  # showing is not restoring

    before = len(store.calls())
    second, second_pid = _run(_campaign(tmp_path / "b", "gpu.power_limit_w=450"), tmp_path, _env(tmp_path))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"restored GPU {UUID0}, left changed by PID {worker} (gone): power limit 700 W" in second.stderr
    calls = store.calls()[before:]
    # the orchestrator put the original back before its first job set anything
    assert (calls[0]["pid"], calls[0]["args"]) == (second_pid, [700_000])
    job_calls = [c for c in calls if c["pid"] != second_pid]
    assert [c["args"] for c in job_calls] == [[450_000], [700_000]]
    assert _power(store) == 700_000 and RestoreRecords(tmp_path / "restore").all() == []


def test_the_doctor_restores_a_stale_record(tmp_path: Path) -> None:
    env = _env(tmp_path)
    store = FileStore(tmp_path / "gpus")
    store.save(UUID0, {"power_limit_mw": 250_000, "sm_locked_mhz": [990, 990], "mem_locked_mhz": None})
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    record = RestoreRecord(uuid=UUID0, pid=dead, pid_start=None, host="here", original_power_limit_mw=650_000,
                           locked_clocks=["sm"], applied={"power_limit_w": 250})  # fmt: skip
    RestoreRecords(tmp_path / "restore").write(record)
    proc = subprocess.run([sys.executable, "-m", "llem.doctor", "--restore-gpus"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    restored = f"restored GPU {UUID0}, left changed by PID {dead} (gone): power limit 650 W, sm clock unlocked"
    assert restored in proc.stdout
    assert store.state()[UUID0] == {"power_limit_mw": 650_000, "sm_locked_mhz": None, "mem_locked_mhz": None}
    assert RestoreRecords(tmp_path / "restore").all() == []
    again = subprocess.run([sys.executable, "-m", "llem.doctor", "--restore-gpus"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0 and "no GPU left changed by a crashed run" in again.stdout


# ------------------------------------------------------------------------------------------- parallel
@pytest.mark.slow
def test_two_parallel_jobs_on_different_gpus_each_restore_only_their_own(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # slow set calls keep both jobs running at once; in the workers only, not in the orchestrator's permission probe
    proc, pid = _run(_campaign(sweep, "hydra.launcher.parallel=true", "gpu.power_limit_w=300,400",
                               "+hydra.launcher.env.LLEM_FAKE_GPU_SET_DELAY_S=1"), tmp_path,
                     _env(tmp_path, LLEM_FAKE_GPUS="2"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _results(sweep)
    gpus = {n: (r[2]["placement"]["gpus"], r[2]["gpu_settings"]["gpu0"]) for n, r in jobs.items()}
    assert {tuple(g) for g, _ in gpus.values()} == {(UUID0,), (UUID1,)}  # side by side, one GPU each
    for placed, section in gpus.values():
        assert section["uuid"] == placed[0]
    store = FileStore(tmp_path / "gpus")
    by_worker: dict[int, list[tuple[str, int]]] = {}
    for call in store.calls():
        if call["pid"] != pid:  # the orchestrator's permission probe re-sets each current limit
            by_worker.setdefault(call["pid"], []).append((call["uuid"], call["args"][0]))
    assert len(by_worker) == 2
    wanted = {jobs_gpu: section["power_limit_w"]["requested"] * 1000 for jobs_gpu, section in
              ((g[0], s) for g, s in gpus.values())}  # fmt: skip
    for calls in by_worker.values():
        uuid = calls[0][0]
        assert calls == [(uuid, wanted[uuid]), (uuid, 700_000)]  # its own GPU only: set, then restored at exit
    assert _power(store, UUID0) == _power(store, UUID1) == 700_000
    assert RestoreRecords(tmp_path / "restore").all() == []


@pytest.mark.slow
def test_warm_workers_of_one_launcher_hand_a_gpu_over_and_a_job_that_sets_nothing_gets_the_originals(
    tmp_path: Path,
) -> None:
    """Two warm workers (one per routing key) on one GPU, one job at a time: the second takes the first's
    settings over instead of being refused, and a job that sets nothing runs on the original values."""
    sweep = tmp_path / "sweep"
    proc, pid = _run(_campaign(sweep, "hydra.launcher.route_by=random_seed", "gpu.power_limit_w=300,null",
                               "random_seed=1,2"), tmp_path, _env(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _results(sweep)
    assert [jobs[n][2]["config"]["random_seed"] for n in range(4)] == [1, 2, 1, 2]
    assert [jobs[n][2]["gpu_settings"] is None for n in range(4)] == [False, False, True, True]
    store = FileStore(tmp_path / "gpus")
    calls = [(c["pid"], c["args"][0]) for c in store.calls() if c["pid"] != pid]
    first, second = calls[0][0], calls[1][0]
    assert first != second
    # job 0 sets 300 on worker 1; job 1 (worker 2) takes it over; job 2 (worker 1, sets nothing) restores it
    assert calls == [(first, 300_000), (second, 300_000), (first, 700_000)]
    assert _power(store) == 700_000 and RestoreRecords(tmp_path / "restore").all() == []
