"""Webhook notifications against a real HTTP server: content, secret URLs, slow and failing endpoints."""

from __future__ import annotations

import hashlib
import logging
import time

import pytest

from llem.config.campaign import CampaignNotificationsConfig, CampaignSettings
from llem.notify import EVENT_CAMPAIGN_END, EVENT_JOB_COMPLETE, EVENT_JOB_FAILURE, Notifier, job_figures, notifier_for

from .webhook import SECRET, receiver

ENV = "LLEM_TEST_WEBHOOK_URL"


def _notifier(url: str | None, **config: object) -> tuple[Notifier, dict[str, str]]:
    environ = {} if url is None else {ENV: url}
    settings = CampaignNotificationsConfig(webhook_url_env=ENV, **config)  # type: ignore[arg-type]
    return Notifier(settings, "night-run", environ=environ), environ


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llem.notify" and r.levelno >= logging.WARNING]


def test_job_and_campaign_events_arrive_with_their_content() -> None:
    with receiver("ok") as hook:
        notifier, _ = _notifier(hook.url)
        notifier.job_finished(job_num=3, overrides=["backend=vllm", "backend.max_num_seqs=8"], status="failed",
                              error="JobFailure: worker died\nTraceback ...", cycle=1, repetition=0, attempt=2,
                              backend="vllm")
        notifier.job_finished(job_num=4, overrides=["backend=pytorch"], status="completed", result_path=None, cycle=1)
        notifier.campaign_ended(outcome="failed", counts={"completed": 5, "failed": 1},
                                summary_path="/data/c/summary.csv", manifest_path="/data/c/.state/m.json")
        assert notifier.close() == 0
    failure, complete, end = hook.events
    campaign_id = hashlib.md5(b"night-run").hexdigest()[:8]
    for event in hook.events:
        assert event["campaign_name"] == "night-run" and event["campaign_id"] == campaign_id and event["sent_at"]
    assert failure["event"] == EVENT_JOB_FAILURE and failure["job_num"] == 3 and failure["status"] == "failed"
    assert failure["overrides"] == ["backend=vllm", "backend.max_num_seqs=8"] and failure["attempt"] == 2
    assert failure["error"].startswith("JobFailure: worker died") and failure["backend"] == "vllm"
    assert failure["text"].endswith("job 3 failed (backend=vllm backend.max_num_seqs=8): JobFailure: worker died")
    # figures nobody measured are null, never 0
    assert failure["figures"] == {"energy_per_output_token_j": None, "throughput_tokens_per_s": None,
                                  "ttft_ms_p50": None}
    assert complete["event"] == EVENT_JOB_COMPLETE and complete["error"] is None and complete["cycle"] == 1
    assert end["event"] == EVENT_CAMPAIGN_END and end["outcome"] == "failed"
    assert end["counts"] == {"completed": 5, "failed": 1} and end["total_jobs"] == 6
    assert end["summary_path"] == "/data/c/summary.csv" and end["manifest_path"] == "/data/c/.state/m.json"


def test_switches_select_the_events() -> None:
    with receiver("ok") as hook:
        notifier, _ = _notifier(hook.url, on_complete=False, on_campaign_end=False)
        notifier.job_finished(job_num=0, overrides=[], status="completed")
        notifier.job_finished(job_num=1, overrides=[], status="failed", error="boom")
        notifier.campaign_ended(outcome="failed", counts={"failed": 1}, summary_path=None, manifest_path=None)
        notifier.close()
    assert [e["event"] for e in hook.events] == [EVENT_JOB_FAILURE]


def test_the_url_is_read_from_the_environment_when_sending(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="llem.notify")
    with receiver("ok") as hook:
        notifier, environ = _notifier(None)
        notifier.job_finished(job_num=0, overrides=[], status="failed", error="early")  # no URL yet
        deadline = time.monotonic() + 5
        while notifier.sender.failed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        environ[ENV] = hook.url  # set while the campaign runs: the next event uses it
        notifier.job_finished(job_num=1, overrides=[], status="completed")
        assert notifier.close() == 1
    assert [e["job_num"] for e in hook.events] == [1]
    assert _warnings(caplog)[0].startswith(f"llem: notification to ${ENV} failed (${ENV} is not set)")
    assert SECRET in hook.paths[0]  # the URL really was the secret one...
    assert not any(SECRET in text for text in _warnings(caplog))  # ...and no log line names it


@pytest.mark.parametrize("mode", ["hang", "error"])
def test_a_slow_or_failing_endpoint_never_blocks_and_is_logged_once(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llem.notify")
    timeout = 0.5
    with receiver(mode) as hook:  # type: ignore[arg-type]
        notifier, _ = _notifier(hook.url, timeout_seconds=timeout)
        began = time.monotonic()
        for n in range(20):
            notifier.job_finished(job_num=n, overrides=[f"x={n}"], status="completed")
        queued = time.monotonic() - began
        time.sleep(0.2)  # the campaign goes on; the first event is on its way
        if mode == "error":  # fast failures: every event is tried (given time: this machine may be loaded)
            deadline = time.monotonic() + 30
            while notifier.sender.failed < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
        closing = time.monotonic()
        undelivered = notifier.close()
        closed = time.monotonic() - closing
        requests = hook.requests
    assert queued < 0.2  # queueing never waits for the endpoint
    assert closed < timeout + 0.5  # the end waits at most the notification timeout
    assert undelivered == 20 and hook.requests >= 1
    warnings = _warnings(caplog)
    assert len(warnings) == 2  # the first failure, once per endpoint however many failed, and the count
    assert warnings[0].startswith("llem: notification to $LLEM_TEST_WEBHOOK_URL failed (")
    assert ("HTTP 500" if mode == "error" else "timed out") in warnings[0]
    assert warnings[1] == "llem: 20 of 20 notification(s) to $LLEM_TEST_WEBHOOK_URL were not delivered"
    if mode == "error":
        assert requests == 20  # a fast failure does not stop later events from being tried
    assert not any(SECRET in w for w in warnings)


def test_direct_urls_are_logged_by_scheme_and_host_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="llem.notify")
    with receiver("error") as hook:
        notifier = Notifier(CampaignNotificationsConfig(webhook_url=hook.url), "c")
        notifier.campaign_ended(outcome="completed", counts={}, summary_path=None, manifest_path=None)
        notifier.close()
    (first, *_) = _warnings(caplog)
    assert f"http://127.0.0.1:{hook.port}" in first and SECRET not in first and "/hooks" not in first


def test_one_notifier_per_campaign_and_endpoint_in_a_process() -> None:
    settings = CampaignSettings(notifications={"webhook_url_env": ENV})
    first = notifier_for(settings, "a")
    assert first is not None and notifier_for(settings, "a") is first and notifier_for(settings, "b") is not first
    assert notifier_for(CampaignSettings(), "a") is None and notifier_for(None, "a") is None
    first.close()
    assert notifier_for(settings, "a") is not first  # a closed one is not handed out again


def test_figures_of_a_missing_or_foreign_result_are_null(tmp_path) -> None:  # type: ignore[no-untyped-def]
    nulls = {"energy_per_output_token_j": None, "throughput_tokens_per_s": None, "ttft_ms_p50": None}
    assert job_figures(None) == nulls and job_figures(tmp_path / "absent.json") == nulls
    foreign = tmp_path / "result.json"
    foreign.write_text('{"schema_version": "0.1", "throughput": 5}')
    assert job_figures(foreign) == nulls


def test_a_serving_load_point_sends_its_steady_window_figures(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The serving figures come from the result's `serving` section; one not measured stays null."""
    import json

    from tests.report.test_serving_plots import _result

    serving = {"ttft_ms": {"p50": 10.0, "p99": 42.0}, "tpot_ms": {"p50": 3.0, "p99": 7.5},
               "output_tokens_per_s": 512.0, "energy": {"j_per_output_token": None, "unavailable_reason": "no GPU"}}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_result("h", {"backend.max_num_seqs": "4", "load.rate": "2"}, serving,
                                       "2026-12-01T00:00:00+00:00")))
    figures = job_figures(path)
    assert figures["serving_ttft_ms_p99"] == 42.0 and figures["serving_tpot_ms_p99"] == 7.5
    assert figures["serving_output_tokens_per_s"] == 512.0
    assert "serving_j_per_output_token" in figures and figures["serving_j_per_output_token"] is None
    assert figures["energy_per_output_token_j"] is None  # nothing measured: null, never 0
