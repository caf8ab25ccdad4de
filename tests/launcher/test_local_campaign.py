"""Campaigns through the llem local launcher with the real tiny model: reuse, cold starts, gaps,
worker death, timeouts, health-check restarts and Ctrl-C."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llem.measure.result import read_result
from llem.campaign.state import read_state
from llem.plan.manifest import read_manifest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
FAST = ["num_input_prompts=2", "max_output_tokens=3", "max_input_tokens=16", "warmup.num_prompts=0",
        "baseline.enabled=false", "campaign.execution.config_gap_seconds=0", "campaign.execution.cycle_gap_seconds=0",
        "campaign.execution.warmup_prompts=0", "campaign.execution.cycles=1"]
# with a (scripted) GPU visible, a measured window lasts at least 10 s by default; health tests need one pass
ONE_PASS = ["measure.min_window_seconds=0"]
LONG = ["max_output_tokens=32", "max_input_tokens=256", "num_input_prompts=400,2",  # a long job, then a short one
        "hydra.sweeper.max_attempts=1"]


def _cmd(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *FAST, *args]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(tmp_path, *args), cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=env or _env())


def _manifest(tmp_path: Path) -> Any:
    return read_manifest(tmp_path / "sweep" / ".state" / "campaign_manifest.json")


def _worker_pids(tmp_path: Path, key: str = "pytorch") -> list[int]:
    log = tmp_path / "sweep" / ".workers" / f"worker-{key}.log"
    return [int(p) for p in re.findall(r"llem worker (\d+) listening", log.read_text())] if log.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _wait_running(tmp_path: Path, job_num: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    path = tmp_path / "sweep" / ".state" / "campaign_manifest.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (m := read_state(path)) is not None and m.job(job_num).status == "running" and _worker_pids(tmp_path):
            time.sleep(1.0)  # let the job get into generation
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_num} never started")


def test_one_warm_worker_reuses_the_model_per_loading_setting(tmp_path: Path) -> None:
    proc = _run(tmp_path, "fp_precision=float32,bfloat16", "backend.batch_size=1,2")
    assert proc.returncode == 0, proc.stderr
    m = _manifest(tmp_path)
    assert [j.status for j in m.jobs] == ["completed"] * 4
    reused = [read_result(Path(j.result_path or "")).model_reused for j in m.jobs]
    assert reused == [False, True, False, True]  # one load per precision
    assert len(_worker_pids(tmp_path)) == 1
    assert all(j.attempts == 1 and j.started_at and j.completed_at for j in m.jobs)
    assert (tmp_path / "sweep" / "0" / ".hydra" / "config.yaml").exists()
    assert (tmp_path / "sweep" / "summary.csv").exists()


def test_force_cold_start_unloads_between_experiments(tmp_path: Path) -> None:
    proc = _run(tmp_path, "backend.batch_size=1,2,3", "campaign.cold_start.force_cold_start=true")
    assert proc.returncode == 0, proc.stderr
    m = _manifest(tmp_path)
    assert [read_result(Path(j.result_path or "")).model_reused for j in m.jobs] == [False, False, False]
    assert len(_worker_pids(tmp_path)) == 1


def test_restart_container_restarts_the_worker_every_experiment(tmp_path: Path) -> None:
    proc = _run(tmp_path, "backend.batch_size=1,2,3", "campaign.cold_start.restart_container=true")
    assert proc.returncode == 0, proc.stderr
    assert len(set(_worker_pids(tmp_path))) == 3
    assert sum(e["kind"] == "cold_start_restart" for e in _manifest(tmp_path).events) == 2


def test_gaps_between_experiments_and_cycles(tmp_path: Path) -> None:
    proc = _run(tmp_path, "backend.batch_size=1,2", "campaign.execution.cycles=2",
                "campaign.execution.config_gap_seconds=1", "campaign.execution.cycle_gap_seconds=2")
    assert proc.returncode == 0, proc.stderr
    jobs = _manifest(tmp_path).jobs
    t = [(dt.datetime.fromisoformat(j.started_at or ""), dt.datetime.fromisoformat(j.completed_at or "")) for j in jobs]
    gaps = [(t[i + 1][0] - t[i][1]).total_seconds() for i in range(3)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0 and gaps[2] >= 1.0, gaps
    assert "config gap" in proc.stderr and "cycle gap" in proc.stderr


def test_worker_killed_mid_job_fails_that_job_and_the_campaign_goes_on(tmp_path: Path) -> None:
    proc = subprocess.Popen(_cmd(tmp_path, *LONG), cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_running(tmp_path, 0, proc)
        os.kill(_worker_pids(tmp_path)[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "1 job(s) failed" in err
    m = _manifest(tmp_path)
    first, second = m.jobs
    assert first.status == "failed" and "worker 'pytorch' died: killed by signal 9" in (first.error or "")
    assert "last lines of" in (first.error or "")
    assert second.status == "completed"
    assert any(e["kind"] == "worker_restart" for e in m.events)
    assert len(_worker_pids(tmp_path)) == 2


def test_job_timeout_kills_the_job_only(tmp_path: Path) -> None:
    # the first job's time includes the worker's imports and model load, then about a second for its one prompt;
    # 400 prompts take minutes, far past the timeout
    proc = _run(tmp_path, "campaign.execution.experiment_timeout_seconds=15", "num_input_prompts=1,400",
                "hydra.sweeper.max_attempts=1", "max_output_tokens=32", "max_input_tokens=256")
    m = _manifest(tmp_path)
    assert proc.returncode != 0
    statuses = {j.params["num_input_prompts"]: (j.status, j.error) for j in m.jobs}
    assert statuses["1"][0] == "completed"
    assert statuses["400"][0] == "failed" and "timed out after 15 s" in (statuses["400"][1] or "")


def test_unhealthy_worker_is_restarted_then_its_jobs_fail(tmp_path: Path) -> None:
    env = _env(LLEM_NVML_FACTORY="tests.launcher.fake_nvml_env:nvml", LLEM_FAKE_GPU_MEM_PCT="95")
    proc = _run(tmp_path, "backend.batch_size=1,2,3", "campaign.health_check.interval_experiments=1",
                "campaign.health_check.max_restarts=1", "hydra.sweeper.max_attempts=1", *ONE_PASS, env=env)
    assert proc.returncode != 0
    m = _manifest(tmp_path)
    checks = [e for e in m.events if e["kind"] == "health_check"]
    assert checks and all(not c["healthy"] and c["devices"]["gpu0"] == pytest.approx(95, abs=0.1) for c in checks)
    assert [e["kind"] for e in m.events if e["kind"].startswith("worker_")] == ["worker_restart", "worker_disabled"]
    assert [j.status for j in m.jobs] == ["completed", "completed", "failed"]
    assert "max_restarts (1) reached" in (m.jobs[2].error or "") and "gpu0 at 95.0% memory > 90%" in (m.jobs[2].error or "")


def test_healthy_worker_is_checked_once_per_cycle(tmp_path: Path) -> None:
    env = _env(LLEM_NVML_FACTORY="tests.launcher.fake_nvml_env:nvml", LLEM_FAKE_GPU_MEM_PCT="40")
    proc = _run(tmp_path, "backend.batch_size=1,2", "campaign.execution.cycles=2", *ONE_PASS, env=env)
    assert proc.returncode == 0, proc.stderr
    checks = [e for e in _manifest(tmp_path).events if e["kind"] == "health_check"]
    assert [(c["job_num"], c["healthy"]) for c in checks] == [(0, True), (2, True)]


def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(_cmd(tmp_path, *LONG), cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_running(tmp_path, 0, proc)
        (pid,) = _worker_pids(tmp_path)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "campaign interrupted" in err and "Traceback" not in err
    m = _manifest(tmp_path)
    assert [j.status for j in m.jobs] == ["interrupted", "pending"]
    assert any(e["kind"] == "interrupted" for e in m.events)
    time.sleep(0.5)
    assert not _alive(pid)
