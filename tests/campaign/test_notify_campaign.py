"""Real campaigns that notify a real webhook: the events, a URL that stays secret, and endpoints that
hang or fail without changing the campaign's results or holding it up beyond the timeout."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from llem.plan.manifest import CampaignManifest
from tests.campaign import helpers as h

from .webhook import SECRET, Receiver, receiver

pytestmark = pytest.mark.slow

ENV = "LLEM_TEST_WEBHOOK_URL"
TIMEOUT_S = 2.0
HANG_TIMEOUT_S = 6.0  # long enough that waiting for it, even once, stands out from a loaded machine's noise
ARGS = [
    "energy.source=nvml,none",  # nvml fails here (no GPU): one failing and one completing configuration
    "campaign.campaign_name=notified",
    "campaign.execution.config_gap_seconds=0",
    f"campaign.notifications.webhook_url_env={ENV}",
]


@dataclass
class Run:
    sweep: Path
    proc: subprocess.CompletedProcess[str]
    hook: Receiver
    manifest: CampaignManifest
    tail_s: float  # from the last job's end to the orchestrator's exit


def _run(tmp: Path, mode: str, *extra: str, timeout_s: float = TIMEOUT_S) -> Run:
    sweep = tmp / "sweep"
    args = [*ARGS, f"campaign.notifications.timeout_seconds={timeout_s}", *extra]
    with receiver(mode) as hook:  # type: ignore[arg-type]
        proc = subprocess.run(h.command(sweep, *args), cwd=tmp, capture_output=True, text=True, timeout=600,
                              env={**os.environ, ENV: hook.url})
        ended = dt.datetime.now(dt.timezone.utc)
    manifest = h.manifest(sweep)
    assert manifest is not None, proc.stderr[-3000:]
    last = max(dt.datetime.fromisoformat(j.completed_at or "") for j in manifest.jobs)
    return Run(sweep, proc, hook, manifest, (ended - last).total_seconds())


def _outcome(run: Run) -> dict[tuple[str, ...], tuple[str, int, bool]]:
    """What the campaign did, per configuration: status, attempts, whether a valid result exists."""
    return {
        tuple(j.overrides): (j.status, j.attempts, bool(j.result_path) and Path(j.result_path or "").is_file())
        for j in run.manifest.jobs
    }


@pytest.fixture(scope="module")
def answered(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(tmp_path_factory.mktemp("answered"), "ok")


def test_events_of_a_real_campaign(answered: Run) -> None:
    run = answered
    assert run.proc.returncode == 1 and "1 job(s) failed" in run.proc.stderr  # the nvml job fails: exit 1
    campaign_id = hashlib.md5(b"notified").hexdigest()[:8]
    assert run.manifest.campaign_id == campaign_id
    assert {(e["campaign_name"], e["campaign_id"]) for e in run.hook.events} == {("notified", campaign_id)}
    failures = run.hook.of("job_failure")
    assert [f["attempt"] for f in failures] == [0]  # failed by the preflight, before any attempt; never retried
    for failure in failures:
        assert "energy.source=nvml" in failure["overrides"] and failure["status"] == "failed"
        assert "preflight: energy.source=nvml measures GPUs but no NVIDIA GPU is visible" in failure["error"]
        assert failure["figures"] == {"energy_per_output_token_j": None, "throughput_tokens_per_s": None,
                                      "ttft_ms_p50": None}
    (complete,) = run.hook.of("job_complete")
    assert "energy.source=none" in complete["overrides"] and complete["error"] is None
    figures = complete["figures"]
    assert figures["throughput_tokens_per_s"] > 0 and figures["ttft_ms_p50"] > 0
    assert figures["energy_per_output_token_j"] is None  # not measured here: null, never 0
    (end,) = run.hook.of("campaign_end")
    assert run.hook.events[-1] is end and end["outcome"] == "failed"
    assert end["counts"] == {"completed": 1, "failed": 1} and end["total_jobs"] == 2
    assert end["summary_path"] == str(run.sweep / "summary.csv") and Path(end["summary_path"]).is_file()


def test_the_secret_url_is_written_nowhere(answered: Run) -> None:
    assert all(SECRET in path for path in answered.hook.paths)  # the events went to the secret URL
    files = [p for p in answered.sweep.rglob("*") if p.is_file()]
    assert any(p.name == "multirun.yaml" for p in files) and any(p.name == "result.json" for p in files)
    leaked = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []
    assert SECRET not in answered.proc.stdout and SECRET not in answered.proc.stderr


def test_a_hanging_endpoint_changes_nothing_and_costs_at_most_the_timeout(answered: Run, tmp_path: Path) -> None:
    hung = _run(tmp_path, "hang", timeout_s=HANG_TIMEOUT_S)
    assert hung.proc.returncode == answered.proc.returncode
    assert _outcome(hung) == _outcome(answered)
    assert hung.hook.requests >= 1  # it was tried, and never answered
    # three events (the preflight failure, one completion, the end) were queued behind it; sending them in
    # line would add 3 x 6 s at the end. The campaign waits at most the timeout once.
    assert hung.tail_s < answered.tail_s + HANG_TIMEOUT_S + 5, (hung.tail_s, answered.tail_s)
    # nor does it hold up the jobs: the first job starts right after the preflight failure was queued
    refused = next(j for j in hung.manifest.jobs if j.status == "failed")
    ran = next(j for j in hung.manifest.jobs if j.status == "completed")
    gap = dt.datetime.fromisoformat(ran.started_at or "") - dt.datetime.fromisoformat(refused.completed_at or "")
    assert dt.timedelta(0) <= gap < dt.timedelta(seconds=HANG_TIMEOUT_S)
    output = hung.proc.stdout + hung.proc.stderr  # log lines go where Hydra's logging sends them
    assert "notification(s) to $LLEM_TEST_WEBHOOK_URL were not delivered" in output
    assert SECRET not in output


def test_an_endpoint_answering_500_changes_nothing(answered: Run, tmp_path: Path) -> None:
    failing = _run(tmp_path, "error", "hydra/launcher=basic")  # job events from the sweeper, not the launcher
    assert failing.proc.returncode == answered.proc.returncode
    # the same jobs completed and failed; with Hydra's basic launcher there is no preflight, so the nvml job fails
    # when it runs (once: a missing GPU is not worth a retry)
    assert {k: (s, r) for k, (s, _, r) in _outcome(failing).items()} == {
        k: (s, r) for k, (s, _, r) in _outcome(answered).items()
    }
    assert sorted(a for _, a, _ in _outcome(failing).values()) == [1, 1]
    assert [e["event"] for e in failing.hook.events] == ["job_failure", "job_complete", "campaign_end"]
    output = failing.proc.stdout + failing.proc.stderr
    assert output.count("notification to $LLEM_TEST_WEBHOOK_URL failed (HTTP 500)") == 1
    assert "3 of 3 notification(s) to $LLEM_TEST_WEBHOOK_URL were not delivered" in output
    assert SECRET not in output


def test_an_interrupted_campaign_says_so(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    with receiver("ok") as hook:
        proc = h.start(sweep, "backend.batch_size=1,2", "campaign.campaign_name=stopped",
                       "campaign.execution.config_gap_seconds=60", f"campaign.notifications.webhook_url_env={ENV}",
                       env={ENV: hook.url})
        m = h.wait_for(proc, sweep, lambda m: any(e["kind"] == "gap" for e in m.events))
        gap = next(e for e in m.events if e["kind"] == "gap")
        assert (gap["gap"], gap["seconds"], gap["before_job"]) == ("config", 60, 1)
        proc.send_signal(signal.SIGTERM)  # as systemd stops a service: during the 60 s gap before job 1
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert [e["event"] for e in hook.events] == ["job_complete", "campaign_end"]
    end = hook.events[-1]
    assert end["outcome"] == "interrupted" and end["counts"] == {"completed": 1, "interrupted": 1}
    assert end["summary_path"] is None
