"""Campaign notifications: a JSON POST to a webhook when a job finishes and when the campaign ends.

A notification must never hold up or break a measurement campaign. Events are posted in
order from one background thread, each with `timeout_seconds`; queueing one never blocks,
and at the end the campaign waits for what is still queued at most `timeout_seconds`.
A failing endpoint is logged once, then counted. The URL may come from an environment
variable read when each event is sent, so a secret URL stays out of configs, manifests,
logs and results: log lines name the endpoint by that variable, or by scheme and host.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llem.config.campaign import CampaignNotificationsConfig, CampaignSettings, campaign_id

__all__ = [
    "EVENT_CAMPAIGN_END",
    "EVENT_JOB_COMPLETE",
    "EVENT_JOB_FAILURE",
    "Notifier",
    "WebhookSender",
    "job_figures",
    "notifier_for",
]

log = logging.getLogger(__name__)

EVENT_JOB_COMPLETE = "job_complete"
EVENT_JOB_FAILURE = "job_failure"
EVENT_CAMPAIGN_END = "campaign_end"
MAX_QUEUED = 1000  # events waiting for a slow endpoint; later ones are dropped and counted
MAX_ERROR_CHARS = 2000
_STOP = object()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def job_figures(result_path: str | Path | None) -> dict[str, float | None]:
    """Energy per output token, throughput and TTFT p50 from a job's result.json; null when not measured.
    A serving load point adds its steady-window J per token, TTFT and TPOT p99 and output-token throughput.

    A missing or unreadable result gives nulls too: a figure nobody measured is never 0.
    """
    figures: dict[str, float | None] = {
        "energy_per_output_token_j": None,
        "throughput_tokens_per_s": None,
        "ttft_ms_p50": None,
    }
    if not result_path or not Path(result_path).is_file():
        return figures
    try:
        from llem.measure.result import read_result

        result = read_result(Path(result_path))
        figures["energy_per_output_token_j"] = result.energy.per_output_token_j
        figures["throughput_tokens_per_s"] = result.throughput_tokens_per_s
        figures["ttft_ms_p50"] = result.latency.ttft_ms.p50
        if result.serving is not None:  # a load point: its steady-window energy and tail latencies
            s = result.serving
            figures["serving_j_per_output_token"] = (s.get("energy") or {}).get("j_per_output_token")
            figures["serving_ttft_ms_p99"] = (s.get("ttft_ms") or {}).get("p99")
            figures["serving_tpot_ms_p99"] = (s.get("tpot_ms") or {}).get("p99")
            figures["serving_output_tokens_per_s"] = s.get("output_tokens_per_s")
    except Exception as error:  # noqa: BLE001 - a result another schema wrote still gets its event
        log.debug("llem: cannot read figures from %s: %s", result_path, error)
    return figures


def endpoint_label(config: CampaignNotificationsConfig) -> str:
    """How logs name the endpoint without revealing the URL's secret parts."""
    if config.webhook_url_env is not None:
        return f"${config.webhook_url_env}"
    parts = urllib.parse.urlsplit(config.webhook_url or "")
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class WebhookSender:
    """Posts JSON payloads, in order, from a daemon thread; never blocks the caller."""

    def __init__(self, resolve_url: Callable[[], str | None], label: str, timeout_s: float) -> None:
        self._resolve_url = resolve_url
        self.label = label
        self.timeout_s = timeout_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._warned = False
        self._closed = False
        self.submitted = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def submit(self, payload: dict[str, Any]) -> None:
        """Queue one event (returns at once; a full queue drops the event and counts it)."""
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"llem-notify {self.label}", daemon=True)
                self._thread.start()
            self.submitted += 1
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def close(self, wait_s: float | None = None) -> int:
        """Stop taking events, wait at most `wait_s` (default: the timeout) for queued ones; return the undelivered."""
        with self._lock:
            if self._closed:
                return self.undelivered
            self._closed = True
            thread = self._thread
        if thread is not None:
            deadline = time.monotonic() + (self.timeout_s if wait_s is None else wait_s)
            while True:
                try:
                    self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
                    break
                except queue.Full:
                    if time.monotonic() >= deadline:
                        break
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            undelivered, explained, self._warned = self.undelivered, self._warned, True
            still_sending = thread is not None and thread.is_alive()
        if undelivered:
            why = "" if explained or not still_sending else f" (no answer within {self.timeout_s:g} s)"
            log.warning(
                "llem: %d of %d notification(s) to %s were not delivered%s", undelivered, self.submitted, self.label, why
            )
        return undelivered

    @property
    def undelivered(self) -> int:
        return self.submitted - self.delivered

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is _STOP:
                return
            problem = self._post(payload)
            with self._lock:
                if problem is None:
                    self.delivered += 1
                else:
                    self.failed += 1
                first_failure = problem is not None and not self._warned
                self._warned = self._warned or problem is not None
            if first_failure:
                log.warning(
                    "llem: notification to %s failed (%s); the campaign goes on, and further failures of this "
                    "endpoint are counted, not logged", self.label, problem,
                )

    def _post(self, payload: dict[str, Any]) -> str | None:
        """None when the endpoint accepted the event, else why not (never containing the URL)."""
        url = self._resolve_url()
        if not url:
            return f"{self.label} is not set" if self.label.startswith("$") else "no URL"
        request = urllib.request.Request(
            url,
            data=json.dumps(payload, default=str).encode("utf-8"),
            headers={"Content-Type": "application/json", "User-Agent": "llem"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read(65536)
            return None
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}"
        except Exception as error:  # noqa: BLE001 - timeouts, refused connections, bad URLs: all non-fatal
            text = str(getattr(error, "reason", None) or error) or type(error).__name__
            return f"{type(error).__name__}: {text}".replace(url, self.label)


class Notifier:
    """The events of one campaign, sent to its webhook as the config says."""

    def __init__(
        self,
        config: CampaignNotificationsConfig,
        campaign_name: str,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.campaign_name = campaign_name
        self.campaign_id = campaign_id(campaign_name)
        self._environ = os.environ if environ is None else environ
        self.sender = WebhookSender(self._url, endpoint_label(config), config.timeout_seconds)

    def _url(self) -> str | None:
        """Resolved at send time, so the URL is never kept anywhere it could be written out."""
        if self.config.webhook_url_env is not None:
            return self._environ.get(self.config.webhook_url_env) or None
        return self.config.webhook_url

    def _base(self, event: str) -> dict[str, Any]:
        return {"event": event, "campaign_name": self.campaign_name, "campaign_id": self.campaign_id, "sent_at": _now()}

    def job_finished(
        self,
        *,
        job_num: int,
        overrides: Sequence[str],
        status: str,
        error: str | None = None,
        result_path: str | Path | None = None,
        cycle: int | None = None,
        repetition: int | None = None,
        attempt: int | None = None,
        backend: str | None = None,
        figures: Mapping[str, float | None] | None = None,
    ) -> None:
        """Queue a `job_complete` or `job_failure` event, if the config asks for it. `figures` (from `job_figures`)
        lets a caller read the result before it takes a lock that parallel jobs share."""
        completed = status == "completed"
        if (completed and not self.config.on_complete) or (not completed and not self.config.on_failure):
            return
        event = EVENT_JOB_COMPLETE if completed else EVENT_JOB_FAILURE
        figures = dict(figures) if figures is not None else job_figures(result_path)
        error_text = None if error is None else str(error)[:MAX_ERROR_CHARS]
        what = " ".join(overrides) or "defaults"
        text = f"llem campaign '{self.campaign_name}' [{self.campaign_id}]: job {job_num} {status} ({what})"
        if error_text:
            text += f": {error_text.strip().splitlines()[0][:300]}"
        self.sender.submit(
            {
                **self._base(event),
                "job_num": job_num,
                "overrides": list(overrides),
                "status": status,
                "error": error_text,
                "backend": backend,
                "cycle": cycle,
                "repetition": repetition,
                "attempt": attempt,
                "figures": figures,
                "text": text,
            }
        )

    def campaign_ended(
        self,
        *,
        outcome: str,
        counts: Mapping[str, int],
        summary_path: str | Path | None,
        manifest_path: str | Path | None,
    ) -> None:
        """Queue the `campaign_end` event (if asked for); `outcome` is completed, failed or interrupted."""
        if not self.config.on_campaign_end:
            return
        counted = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no jobs"
        self.sender.submit(
            {
                **self._base(EVENT_CAMPAIGN_END),
                "outcome": outcome,
                "counts": dict(counts),
                "total_jobs": sum(counts.values()),
                "summary_path": None if summary_path is None else str(summary_path),
                "manifest_path": None if manifest_path is None else str(manifest_path),
                "text": f"llem campaign '{self.campaign_name}' [{self.campaign_id}] {outcome}: {counted}",
            }
        )

    def close(self, wait_s: float | None = None) -> int:
        """Wait at most `wait_s` (default: the timeout) for queued events; the number not delivered."""
        _forget(self)
        return self.sender.close(wait_s)


_SHARED: dict[tuple[str, str], Notifier] = {}
_SHARED_LOCK = threading.Lock()


def _forget(notifier: Notifier) -> None:
    with _SHARED_LOCK:
        for key, value in list(_SHARED.items()):
            if value is notifier:
                del _SHARED[key]


def notifier_for(settings: CampaignSettings | None, campaign_name: str) -> Notifier | None:
    """This process's notifier for the campaign (None without a webhook).

    The sweeper and the launcher's runner live in one process and get the same notifier, so
    events go out in one order and a failing endpoint is logged once. It is closed at exit
    (bounded by its timeout) if nobody closed it before.
    """
    if settings is None or not settings.notifications.enabled:
        return None
    key = (campaign_name, settings.notifications.model_dump_json())
    with _SHARED_LOCK:
        notifier = _SHARED.get(key)
        if notifier is None:
            notifier = Notifier(settings.notifications, campaign_name)
            _SHARED[key] = notifier
            atexit.register(notifier.close)
    return notifier
