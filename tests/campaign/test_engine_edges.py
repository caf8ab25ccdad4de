"""The engine at its edges, run for real (`python -m llem -m ...`): a crash while the state is first created, a
Ctrl-C or SIGTERM outside the run loop (state opening, preflight, finish), and a custom `hydra.sweep.subdir`
through crash recovery and added repetitions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llem.campaign.state import CampaignState
from tests.campaign import helpers as h

from .webhook import receiver

pytestmark = [pytest.mark.slow]  # every test runs `python -m llem` in a subprocess, most of them twice

ENV = "LLEM_TEST_WEBHOOK_URL"
DRY = "hydra.sweeper.dry_run=true"
SUBDIR = "hydra.sweep.subdir=job_${hydra.job.num}"


def _run(sweep: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
         ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(h.command(sweep, *args), cwd=sweep.parent, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_a_crash_while_the_state_is_first_created_resumes_cleanly(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    crashed = _run(sweep, "backend.batch_size=1,2", env={"LLEM_CRASH_AT_WRITE": "campaign.db:1"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert (sweep / ".state" / "campaign.db").exists() and h.manifest(sweep) is None  # created, never committed
    again = _run(sweep, "backend.batch_size=1,2", DRY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr and "no campaign state" not in again.stderr
    m = h.manifest(sweep)
    assert m is not None and sorted(h.statuses(m).values()) == ["pending", "pending"]


# ---------------------------------------------------------------------------------------------- interrupts
def _interrupted(sweep: Path, point: str, signame: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list]:
    command = [sys.executable, "-m", "tests.campaign.interrupt_at", point, signame,
               *h.command(sweep, *args)[3:]]  # fmt: skip
    with receiver("ok") as hook:
        proc = subprocess.run(command, cwd=h.REPO, capture_output=True, text=True, timeout=600,
                              env={**os.environ, ENV: hook.url})  # fmt: skip
    return proc, hook.events


@pytest.mark.parametrize(
    ("point", "signame"),
    [("state", "SIGINT"), ("state", "SIGTERM"), ("preflight", "SIGINT"), ("finish", "SIGTERM")],
)
def test_an_interrupt_outside_the_run_loop_ends_like_any_other(tmp_path: Path, point: str, signame: str) -> None:
    sweep = tmp_path / "sweep"
    # energy.source=nvml: every job fails in the preflight here (no GPU), so the finish comes without running a model
    args = ["backend.batch_size=1,2", "energy.source=nvml", "campaign.campaign_name=stopped",
            f"campaign.notifications.webhook_url_env={ENV}"]  # fmt: skip
    proc, events = _interrupted(sweep, point, signame, *args)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "llem: campaign interrupted; finished jobs are kept" in proc.stderr
    assert f"hydra.sweep.dir={sweep}" in proc.stderr
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    ends = [e for e in events if e["event"] == "campaign_end"]
    assert len(ends) == 1 and ends[0]["outcome"] == "interrupted" and events[-1] is ends[0], events
    m = h.manifest(sweep)
    assert m is not None  # what was committed before the interrupt stands
    if point in ("state", "preflight"):
        assert sorted(h.statuses(m).values()) == ["pending", "pending"] and not [e for e in events if e is not ends[0]]
    again = _run(sweep, *args, DRY)  # and the campaign resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming campaign 'stopped'" in again.stderr


# ---------------------------------------------------------------------------------------------- custom subdir
@pytest.mark.slow
def test_crash_recovery_finds_results_in_a_custom_subdir(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["backend.batch_size=1,2", "campaign.execution.config_gap_seconds=0", SUBDIR]
    first = _run(sweep, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.name.startswith("job_")) == ["job_0", "job_1"]
    result = sweep / "job_1" / "result.json"
    stamp = result.stat().st_mtime_ns
    # as if the orchestrator was killed after job 1 wrote its result, before the launcher reported where
    state = CampaignState(sweep / ".state" / "campaign_manifest.json")
    state.load()
    state.update({1: {"status": "running", "result_path": None, "completed_at": None}})
    state.close()
    again = _run(sweep, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 finished before the crash were recorded now: [1]" in again.stderr
    m = h.manifest(sweep)
    assert m is not None and h.statuses(m) == {0: "completed", 1: "completed"}
    assert m.job(1).result_path == str(result) and result.stat().st_mtime_ns == stamp  # recovered, not run again
    assert not (sweep / "1").exists()


@pytest.mark.slow
def test_added_repetitions_write_to_the_custom_subdir(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["campaign.daemon.enabled=true", "campaign.daemon.interval=1s", "campaign.daemon.total_duration=600s",
            "campaign.execution.config_gap_seconds=0", SUBDIR]  # fmt: skip
    proc = h.start(sweep, *args)
    m = h.wait_for(proc, sweep, lambda m: any(j.repetition == 1 and j.status == "running" for j in m.jobs))
    h.kill(proc)
    (added,) = [j for j in m.jobs if j.repetition == 1]
    assert added.result_path == str(sweep / f"job_{added.job_num}" / "result.json")
    (first,) = [j for j in m.jobs if j.repetition == 0]
    assert first.result_path == str(sweep / "job_0" / "result.json") and json.loads(
        Path(first.result_path).read_text())["config_hash"] == first.config_hash  # fmt: skip
    assert not [p for p in sweep.iterdir() if p.name.isdigit()]  # nothing looks for <sweep>/<num>/


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_an_interrupt_while_planning_records_nothing_and_says_so(tmp_path: Path, signame: str) -> None:
    sweep = tmp_path / "sweep"
    proc, events = _interrupted(sweep, "plan", signame, "backend.batch_size=1,2")
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "llem: interrupted while planning; nothing was recorded or launched" in proc.stderr
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert h.manifest(sweep) is None and not events


def test_a_subdir_that_gives_two_jobs_one_directory_is_refused_before_anything_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shared = "hydra.sweep.subdir=${hydra.job.override_dirname}"  # a common Hydra idiom, without the job's number
    proc = _run(sweep, "backend.batch_size=1,2", shared, "campaign.execution.cycles=2", DRY)
    assert proc.returncode != 0
    assert "the same directory" in proc.stderr and "${hydra.job.num}" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and h.manifest(sweep) is None
    ok = _run(sweep, "backend.batch_size=1,2", "hydra.sweep.subdir=${hydra.job.num}_${hydra.job.override_dirname}",
              "campaign.execution.cycles=2", DRY)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
