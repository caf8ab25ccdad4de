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


def test_sigterm_between_the_record_and_the_notification(tmp_path: Path) -> None:
    state = _SignalledState(tmp_path / ".state" / "campaign_manifest.json", export_interval_s=0.0)
    state.replace(CampaignManifest(
        campaign_name="c", config_hash="h", created_at=utc_now(), updated_at=utc_now(), sweep_dir=str(tmp_path),
        cycles=1, structure="interleaved",
        jobs=[ManifestJob(job_num=0, overrides=["backend=pytorch"], backend="pytorch", cycle=0, config_hash="c0")],
    ))  # fmt: skip
    recorder = _Recorder()
    session = JobSession(state, None, notifier=recorder, campaign_name="c")  # type: ignore[arg-type]
    ret = JobReturn(overrides=["backend=pytorch"], status=JobStatus.COMPLETED, _return_value=None)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        session.finished(0, ret)
    stored = read_state(state.manifest_path)
    assert stored is not None and stored.job(0).status == "completed"
    assert [(e["job_num"], e["status"]) for e in recorder.queued] == [(0, "completed")]
