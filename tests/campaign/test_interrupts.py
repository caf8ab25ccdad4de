"""An interrupt that arrives while a finished job is being recorded waits until the record and its notification are
both done: a campaign stopped at that moment never holds a completed job whose notification was never queued."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from hydra.core.utils import JobReturn, JobStatus

from llem.campaign.session import JobSession
from llem.campaign.state import CampaignState, read_state
from llem.launch.interrupts import interrupts_deferred, sigterm_as_interrupt
from llem.plan.manifest import CampaignManifest, ManifestJob, utc_now


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_the_block_is_raised_after_it(signum: int) -> None:
    steps: list[str] = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        with interrupts_deferred():
            os.kill(os.getpid(), signum)
            steps.append("after the signal")  # still runs: the interrupt is held
        steps.append("after the block")  # never runs: the held interrupt is raised on leaving the block
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_without_a_signal_the_block_changes_nothing() -> None:
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with interrupts_deferred():
        pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


class _Recorder:
    """Stands in for the notifier: what was queued."""

    def __init__(self) -> None:
        self.queued: list[dict[str, Any]] = []

    def job_finished(self, **event: Any) -> None:
        self.queued.append(event)


class _SignalledState(CampaignState):
    """A real state that receives SIGTERM just after it commits a job's outcome (as `kill` might, at worst)."""

    def update(self, changes: dict[int, dict[str, Any]]) -> None:
        super().update(changes)
        if any(c.get("status") == "completed" for c in changes.values()):
            os.kill(os.getpid(), signal.SIGTERM)


def _state(tmp_path: Path, jobs: int, kind: type[CampaignState] = CampaignState) -> CampaignState:
    state = kind(tmp_path / ".state" / "campaign_manifest.json", export_interval_s=0.0)
    state.replace(CampaignManifest(
        campaign_name="c", config_hash="h", created_at=utc_now(), updated_at=utc_now(), sweep_dir=str(tmp_path),
        cycles=1, structure="interleaved",
        jobs=[ManifestJob(job_num=n, overrides=["backend=pytorch", f"+n={n}"], backend="pytorch", cycle=0,
                          config_hash=f"c{n}") for n in range(jobs)],
    ))  # fmt: skip
    return state


def test_sigterm_between_the_record_and_the_notification(tmp_path: Path) -> None:
    state = _state(tmp_path, 1, _SignalledState)
    recorder = _Recorder()
    session = JobSession(state, None, notifier=recorder, campaign_name="c")  # type: ignore[arg-type]
    ret = JobReturn(overrides=["backend=pytorch"], status=JobStatus.COMPLETED, _return_value=None)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        session.finished(0, ret)
    stored = read_state(state.manifest_path)
    assert stored is not None and stored.job(0).status == "completed"
    assert [(e["job_num"], e["status"]) for e in recorder.queued] == [(0, "completed")]


def test_an_interrupt_after_the_record_keeps_the_outcome(tmp_path: Path) -> None:
    """The launcher marks its current job interrupted; if that job's outcome is already recorded, it stands (a
    completed job marked interrupted would run again on resume)."""
    state = _state(tmp_path, 3)
    session = JobSession(state, None, campaign_name="c")
    session.started(0)
    session.finished(0, JobReturn(overrides=[], status=JobStatus.COMPLETED, _return_value=None))
    session.started(1)
    session.interrupted(0)  # the stop landed just after job 0 was recorded
    session.interrupted(1)
    stored = read_state(state.manifest_path)
    assert stored is not None
    assert [j.status for j in stored.jobs] == ["completed", "interrupted", "pending"]
    assert [e["job_num"] for e in stored.events if e["kind"] == "interrupted"] == [0, 1]


def test_a_job_ended_by_the_stop_stays_interrupted(tmp_path: Path) -> None:
    """Side by side, the stop marks the running jobs interrupted and then kills their workers; the failures their
    threads report afterwards are the stop's doing, and must not turn them into failed jobs (not run on resume)."""
    state = _state(tmp_path, 2)
    recorder = _Recorder()
    session = JobSession(state, None, notifier=recorder, campaign_name="c")  # type: ignore[arg-type]
    session.started(0)
    session.started(1)
    session.interrupted(0)
    session.interrupted(1)
    session.finished(0, JobReturn(overrides=[], status=JobStatus.FAILED, _return_value=RuntimeError("worker died")))
    session.finished(1, JobReturn(overrides=[], status=JobStatus.COMPLETED, _return_value=None))  # it got there
    stored = read_state(state.manifest_path)
    assert stored is not None
    assert [j.status for j in stored.jobs] == ["interrupted", "completed"]
    assert [(e["job_num"], e["status"]) for e in recorder.queued] == [(1, "completed")]


def test_a_held_interrupt_wins_over_an_error_in_the_block() -> None:
    with pytest.raises(KeyboardInterrupt) as caught, sigterm_as_interrupt():
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            raise ValueError("the step failed too")
    assert isinstance(caught.value.__context__, ValueError)  # the error is kept as the interrupt's context
