"""The circuit breaker and the wall-clock limit, on a real campaign (real plan, real state) with a scripted launcher.

The launcher runs no process: each job's outcome comes from a script, and it reports through the campaign's
session exactly as the llem launchers do (started, then finished; interrupted when a stop lands in a job).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus

import llem.campaign.engine as engine_module
from llem.campaign.engine import Campaign, CampaignInterrupted, CampaignOptions
from llem.campaign.guards import CircuitBreaker, StopReason
from llem.campaign.planning import PlannedCampaign
from llem.campaign.state import read_state
from llem.config import CampaignSettings
from llem.launch.jobs import Job
from llem.plan.compose import FastComposer
from llem.plan.expand import Axis
from llem.plan.planner import make_plan

OK, FAIL, HANG = "ok", "fail", "hang"


@pytest.fixture
def loader() -> Iterator[Any]:
    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


class ScriptedLauncher:
    """Runs jobs in order on the calling thread; each job's outcome is scripted by job number."""

    def __init__(self, script: dict[int, str]) -> None:
        self.script = script
        self.reporter: Any = None
        self.timeline: list[tuple[str, int, float]] = []

    def attach(self, reporter: Any) -> None:
        self.reporter = reporter

    def workers(self) -> Any:
        return None

    def run_jobs(self, jobs: Sequence[Job]) -> Sequence[JobReturn]:
        returns = []
        for job in jobs:
            current = job.num
            try:
                self.reporter.started(job.num, key="pytorch", label=job.label)
                self.timeline.append(("start", job.num, time.monotonic()))
                action = self.script.get(job.num, OK)
                if action == HANG:
                    time.sleep(60)  # a job that runs on until something stops it
                if action == FAIL:
                    ret = JobReturn(overrides=list(job.overrides), status=JobStatus.FAILED,
                                    _return_value=RuntimeError(f"CUDA error in job {job.num}"))
                else:
                    ret = JobReturn(overrides=list(job.overrides), status=JobStatus.COMPLETED, _return_value=None)
                self.reporter.finished(job.num, ret, overrides=list(job.overrides))
                self.timeline.append(("end", job.num, time.monotonic()))
                returns.append(ret)
            except KeyboardInterrupt:
                self.reporter.interrupted(current)
                raise
        return returns


class Recorder:
    """Stands in for the webhook: what it was asked to send."""

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.jobs: list[tuple[int, str]] = []

    def job_finished(self, **event: Any) -> None:
        self.jobs.append((event["job_num"], event["status"]))

    def campaign_ended(self, *, outcome: str, **_: Any) -> None:
        self.ended.append(outcome)

    def close(self, wait_s: float | None = None) -> int:
        return 0


def _campaign(loader: Any, tmp_path: Path, launcher: ScriptedLauncher, jobs: int,
              monkeypatch: pytest.MonkeyPatch, **execution: Any) -> tuple[Campaign, Recorder]:
    settings = CampaignSettings(
        execution={"cycles": 1, "config_gap_seconds": 0, "cycle_gap_seconds": 0, **execution},
        health_check={"enabled": False},
    )
    axes = [Axis(key="backend.batch_size", choices=[f"backend.batch_size={n}" for n in range(1, jobs + 1)])]
    composer = FastComposer(loader, "config")
    plan = make_plan(axes, settings, composer.compose, default_backend="pytorch", model_options={"tiny"})
    recorder = Recorder()
    monkeypatch.setattr(engine_module, "notifier_for", lambda settings, name: recorder)
    campaign = Campaign(PlannedCampaign(plan, settings, composer), launcher=launcher, sweep_dir=tmp_path / "sweep",
                        options=CampaignOptions(max_attempts=1), say=lambda message: None)
    return campaign, recorder


def _statuses(campaign: Campaign) -> list[str]:
    manifest = read_state(campaign.manifest_path)
    assert manifest is not None
    return [j.status for j in sorted(manifest.jobs, key=lambda j: j.job_num)]


def _events(campaign: Campaign) -> list[dict[str, Any]]:
    manifest = read_state(campaign.manifest_path)
    assert manifest is not None
    return manifest.events


def test_a_probe_that_fails_stops_the_campaign_and_leaves_the_rest_pending(
    loader: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = ScriptedLauncher({0: FAIL, 1: FAIL, 2: FAIL, 3: FAIL})
    campaign, recorder = _campaign(loader, tmp_path, launcher, 6, monkeypatch, max_consecutive_failures=2,
                                   circuit_breaker_cooldown_seconds=0.3)
    with pytest.raises(CampaignInterrupted) as stopped:
        campaign.run()
    assert stopped.value.exit_code == 1
    assert "circuit breaker" in str(stopped.value) and "probe job 2" in str(stopped.value)
    assert f"hydra.sweep.dir={campaign.sweep_dir}" in str(stopped.value)
    assert _statuses(campaign) == ["failed", "failed", "failed", "pending", "pending", "pending"]
    starts = {n: t for what, n, t in launcher.timeline if what == "start"}
    ends = {n: t for what, n, t in launcher.timeline if what == "end"}
    assert sorted(starts) == [0, 1, 2]
    assert starts[2] - ends[1] >= 0.3  # the probe ran only after the cooldown
    kinds = [e["kind"] for e in _events(campaign)]
    assert kinds.index("circuit_breaker_open") < kinds.index("circuit_breaker_tripped") < kinds.index("stopped")
    assert recorder.ended == ["interrupted"]
    # fixed: running the same campaign again resumes it, and the pending jobs run
    again, _ = _campaign(loader, tmp_path, ScriptedLauncher({}), 6, monkeypatch, max_consecutive_failures=2,
                         circuit_breaker_cooldown_seconds=0.3)
    again.run()
    assert _statuses(again) == ["failed", "failed", "failed", "completed", "completed", "completed"]


def test_a_probe_that_succeeds_closes_the_breaker(loader: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = ScriptedLauncher({0: FAIL, 1: FAIL, 3: FAIL, 4: FAIL})
    campaign, recorder = _campaign(loader, tmp_path, launcher, 6, monkeypatch, max_consecutive_failures=2,
                                   circuit_breaker_cooldown_seconds=0.0)
    outcome = campaign.run()  # 3 and 4 fail in a row again: the breaker opens, and probe 5 closes it
    assert _statuses(campaign) == ["failed", "failed", "completed", "failed", "failed", "completed"]
    assert [j.job_num for j in outcome.failed] == [0, 1, 3, 4]
    events = _events(campaign)
    assert [(e["kind"], e.get("probe_job")) for e in events if e["kind"].startswith("circuit_breaker")] == [
        ("circuit_breaker_open", 2), ("circuit_breaker_closed", 2),
        ("circuit_breaker_open", 5), ("circuit_breaker_closed", 5),
    ]
    assert recorder.ended == ["failed"]


def test_without_a_breaker_every_failing_job_runs(loader: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = ScriptedLauncher({n: FAIL for n in range(5)})
    campaign, _ = _campaign(loader, tmp_path, launcher, 5, monkeypatch)
    campaign.run()
    assert _statuses(campaign) == ["failed"] * 5


def test_the_wall_clock_stops_the_campaign_as_an_interrupt(
    loader: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = ScriptedLauncher({2: HANG})
    campaign, recorder = _campaign(loader, tmp_path, launcher, 5, monkeypatch, wall_clock_timeout_hours=1.0 / 3600)
    began = time.monotonic()
    with pytest.raises(CampaignInterrupted) as stopped:
        campaign.run()
    assert time.monotonic() - began < 30  # the hanging job was cut short at the limit
    assert stopped.value.exit_code == 130
    assert "wall-clock limit of" in str(stopped.value)
    assert _statuses(campaign) == ["completed", "completed", "interrupted", "pending", "pending"]
    assert [e for e in _events(campaign) if e["kind"] == "stopped"][0]["by"] == "wall_clock"
    assert recorder.ended == ["interrupted"]


def test_parallel_jobs_wait_for_the_probe() -> None:
    """Jobs started while the breaker is open wait behind the probe; its success lets them all run."""
    stops: list[StopReason] = []
    waits: list[float] = []
    breaker = CircuitBreaker(2, 5.0, stop=stops.append, wait=waits.append)
    breaker.finished(0, "failed")
    breaker.before_start(2)  # below the threshold: no wait
    breaker.finished(1, "failed")
    assert breaker.state == "open"
    breaker.before_start(3)  # the probe: it waits the cooldown
    assert waits == [5.0] and breaker.probe == 3
    breaker.finished(2, "failed")  # a job that was already running fails: it is not the probe
    assert not stops and breaker.state == "probing"
    breaker.finished(3, "failed")
    assert breaker.state == "tripped" and [s.kind for s in stops] == ["circuit_breaker"]


def test_a_stop_that_comes_after_the_run_is_over_is_dropped() -> None:
    """The wall clock's timer can fire just as the campaign closes its guards: no interrupt may land after that."""
    import signal
    import threading

    from llem.campaign.guards import StopRequest

    events: list[dict[str, Any]] = []
    request = StopRequest(thread=threading.main_thread(), event=lambda **e: events.append(e))
    request.close()
    previous = signal.getsignal(signal.SIGINT)
    hits: list[int] = []
    signal.signal(signal.SIGINT, lambda *a: hits.append(1))
    try:
        request(StopReason("late", 130, "wall_clock"))
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert request.reason is None and not events and not hits
