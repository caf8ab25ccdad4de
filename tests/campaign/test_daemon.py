"""The daemon schedule: repetitions every `interval` until `total_duration`, resumable mid-schedule."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest

from llem.config.campaign import CampaignDaemonConfig
from llem.plan import schedule
from tests.campaign import helpers as h

DAEMON = ["campaign.daemon.enabled=true", "campaign.execution.config_gap_seconds=0", "backend.batch_size=1,2"]


def _t(text: str | None) -> dt.datetime:
    assert text is not None
    return dt.datetime.fromisoformat(text)


def test_next_local_time_is_today_or_tomorrow() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    later = schedule.next_local_time("23:59", now)
    assert now < later <= now + dt.timedelta(days=1)
    local = now.astimezone()
    earlier = f"{(local - dt.timedelta(hours=1)).hour:02d}:{local.minute:02d}"
    assert schedule.next_local_time(earlier, now) - now == dt.timedelta(hours=23)


def test_schedule_state_transitions() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    state = schedule.initial_state(CampaignDaemonConfig(enabled=True, interval="2s", total_duration="5s"), now)
    assert schedule.may_start(state, now) and state["deadline"] == (now + dt.timedelta(seconds=5)).isoformat()
    state = schedule.after_repetition(state, now + dt.timedelta(seconds=2))
    assert state["repetitions_done"] == 1 and _t(state["next_start"]) == now + dt.timedelta(seconds=4)
    assert schedule.may_start(state, now + dt.timedelta(seconds=2))
    assert not schedule.may_start(state, now + dt.timedelta(seconds=5))  # resumed after the deadline: no start
    state = schedule.after_repetition(state, now + dt.timedelta(seconds=4))
    assert not schedule.may_start(state, now + dt.timedelta(seconds=4))  # would begin at 6 s, after the 5 s deadline
    once = schedule.initial_state(CampaignDaemonConfig(enabled=True), now)
    assert not schedule.may_start(schedule.after_repetition(once, now), now)  # no interval: one repetition


def _check_repetitions(sweep: Path, interval: float) -> dict[int, list]:
    m = h.manifest(sweep)
    assert m is not None
    reps: dict[int, list] = {}
    for job in m.jobs:
        reps.setdefault(job.repetition, []).append(job)
    assert sorted(reps) == list(range(len(reps)))  # no repetition skipped
    deadline = _t(m.schedule["deadline"])
    began = {e["repetition"]: _t(e["at"]) for e in m.events if e["kind"] == "repetition_started"}
    planned = sorted(j.config_hash for j in reps[0])
    assert len(planned) == len(set(planned)) == 2 and None not in planned  # batch_size=1 and 2: two configs
    assert sorted(str(j.params["backend.batch_size"]) for j in reps[0]) == ["1", "2"]
    previous_end = None
    for r in sorted(reps):
        jobs = reps[r]
        # every planned config ran exactly once in this repetition, on its first attempt
        assert sorted(j.config_hash for j in jobs) == planned
        assert sorted(str(j.params["backend.batch_size"]) for j in jobs) == ["1", "2"]
        assert [(j.status, j.attempts) for j in jobs] == [("completed", 1)] * len(planned)
        assert began[r] < deadline  # every repetition began before the deadline
        start = min(_t(j.started_at) for j in jobs)
        assert start >= began[r]
        if previous_end is not None:
            assert (start - previous_end).total_seconds() >= interval - 0.05
        previous_end = max(_t(j.completed_at) for j in jobs)
    assert len({j.job_num for j in m.jobs}) == len(m.jobs)
    assert len({j.result_path for j in m.jobs}) == len(m.jobs)
    assert m.schedule["repetitions_done"] == len(reps) == len(began)
    assert _t(m.schedule["next_start"]) >= deadline  # stopped because the next one could not begin in time
    return reps


@pytest.mark.slow
def test_daemon_repeats_until_the_deadline(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(h.command(sweep, *DAEMON, "campaign.daemon.interval=2s",
                                    "campaign.daemon.total_duration=16s", "campaign.health_check.enabled=true"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reps = _check_repetitions(sweep, 2.0)
    assert len(reps) >= 2
    m = h.manifest(sweep)
    assert m is not None
    assert [e["repetition"] for e in m.events if e["kind"] == "repetition_started"] == list(range(len(reps)))
    # cycles=1: one health check per repetition (not one per campaign), before that repetition's first job
    repetition_of = {j.job_num: j.repetition for j in m.jobs}
    checks = [e for e in m.events if e["kind"] == "health_check"]
    assert [repetition_of[e["job_num"]] for e in checks] == sorted(reps)
    for check in checks:
        jobs = reps[repetition_of[check["job_num"]]]
        assert check["job_num"] == min(jobs, key=lambda j: _t(j.started_at)).job_num
        assert check["healthy"] is True and check["key"] == "pytorch"
    assert not [e for e in m.events if e["kind"] in ("worker_restart", "worker_disabled")]
    assert f"daemon schedule finished after {len(reps)} repetition(s)" in proc.stderr
    assert " llem: job 0 started" in proc.stderr  # quiet: plain log lines, no live display


@pytest.mark.slow
def test_resumed_daemon_continues_its_schedule(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*DAEMON, "campaign.daemon.interval=4s", "campaign.daemon.total_duration=20s"]
    proc = h.start(sweep, *args)
    m = h.wait_for(proc, sweep, lambda m: m.schedule.get("repetitions_done", 0) >= 1)
    h.kill(proc)  # killed while waiting for the next repetition
    first_start = m.schedule["first_start"]
    done = {j.job_num: j.completed_at for j in m.jobs if j.status == "completed"}
    proc = subprocess.run(h.command(sweep, *args), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = h.manifest(sweep)
    assert m is not None and m.schedule["first_start"] == first_start
    assert {j.job_num: j.completed_at for j in m.jobs if j.job_num in done} == done  # not run again
    reps = _check_repetitions(sweep, 4.0)
    assert len(reps) >= 2 and min(reps) == 0
