"""The built-in load generator: an asyncio client that streams `/v1/completions` and times every chunk.

One aiohttp session (HTTP/1.1 keep-alive, no connection limit of its own) carries all
requests: its connection pool stays cheap with hundreds of connections open, where httpx's
pool scan made the client itself the bottleneck (benchmarks/serving_client.py). Concurrency
is limited by a semaphore, as `vllm bench serve` does, so that a
closed loop and a capped open loop count send times the same way. Each chunk is stamped
once, when its bytes are read, with the monotonic clock the energy monitor also uses.
A request that fails in any way, including a server that dies with it in flight, is
recorded with status "error" and the reason; it is never dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llem.serving.metrics import MetricsSamples, scrape
from llem.serving.records import OK, RequestRecord
from llem.serving.schedule import Arrival
from llem.serving.steady import RUN, SteadyTracker

COMPLETIONS = "/v1/completions"
# Servers without `ignore_eos` whose requests may carry a `generation_config` (transformers serve): each request's
# output length is fixed there, with min_new_tokens = max_new_tokens.
LENGTH_BY_GENERATION_CONFIG = frozenset({"pytorch"})
ERROR_TEXT_LIMIT = 500


def request_body(engine: str | None, *, fixed_length: bool = True, sampling: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The fields every request of a load point shares.

    `ignore_eos` fixes output lengths at `max_tokens`. vLLM merges tokens into one chunk when
    the client reads slower than it generates; `return_token_ids` makes each chunk say how many
    it carries, so tokens are placed in time exactly. Servers that do not know a field may
    refuse it, so engine-specific fields go only to their engine.
    """
    body: dict[str, Any] = dict(sampling or {})
    if fixed_length and engine not in LENGTH_BY_GENERATION_CONFIG:
        body["ignore_eos"] = True
    if engine == "vllm":
        body["return_token_ids"] = True
    return body


@dataclass
class LoadRun:
    """Everything one load point produced: the records and the phase boundaries on the client clock."""

    records: list[RequestRecord]
    warmup_end_s: float
    measured_start_s: float
    measured_end_s: float
    metrics: MetricsSamples = field(default_factory=MetricsSamples)
    # the POST made between the warm-up and the measured requests (a prefix-cache reset): path, passed, detail
    between_phases: dict[str, Any] | None = None

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.warmup]

    @property
    def duration_s(self) -> float:
        return self.measured_end_s - self.measured_start_s


class ServingClient:
    """Sends a schedule of completion requests to one server and records each one.

    `body` holds the request fields every request shares (sampling settings, `ignore_eos`);
    the prompt, `max_tokens` and the streaming options are set per request.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        body: dict[str, Any] | None = None,
        request_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        generation_config: dict[str, Any] | None = None,
        text_chunks: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # not None: each request carries a generation_config with these fields and its length fixed (transformers)
        self.generation_config = generation_config
        # the server streams text pieces, not tokens (transformers serve): tokens it holds back until they decode
        # to whole characters arrive merged, and its usage count is the one to keep
        self.text_chunks = text_chunks
        self.model = model
        self.body = dict(body or {})
        self.request_timeout_s = request_timeout_s
        self.clock = clock

    def run(self, arrivals: Sequence[Arrival], prompts: Sequence[str], **kw: Any) -> LoadRun:
        """`run_async` in a fresh event loop."""
        return asyncio.run(self.run_async(arrivals, prompts, **kw))

    async def run_async(
        self,
        arrivals: Sequence[Arrival],
        prompts: Sequence[str],
        *,
        max_concurrency: int | None = None,
        tracker: SteadyTracker | None = None,
        metrics_interval_s: float | None = None,
        post_after_warmup: str | None = None,
    ) -> LoadRun:
        """Warm-up requests first (all answered before measuring starts), then the measured ones on schedule.

        `prompts[i]` is the prompt of `arrivals[i]`. `tracker` is told of every send, first token
        and finish of a measured request, and of the start of the measured phase; it opens and
        closes the steady window. `metrics_interval_s` reads `/metrics` that often while measuring.
        `post_after_warmup` is a path POSTed once the warm-up is answered, before the measured requests
        (vLLM's `/reset_prefix_cache`, so neither the warm-up nor an earlier load point on a reused
        server has cached the measured prompts' prefixes); its outcome is kept in `between_phases`.
        """
        if len(prompts) != len(arrivals):
            raise ValueError(f"{len(arrivals)} arrivals but {len(prompts)} prompts")
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.request_timeout_s)
        semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        records = [RequestRecord(index=a.index, warmup=a.warmup, expected_output_tokens=a.output_tokens)
                   for a in arrivals]
        samples = MetricsSamples()
        hooks = tracker.hooks if tracker is not None else None
        async with aiohttp.ClientSession(base_url=self.base_url, connector=connector, timeout=timeout) as client:
            warm = [i for i, a in enumerate(arrivals) if a.warmup]
            await asyncio.gather(*(self._send(client, arrivals[i], prompts[i], records[i], semaphore, None)
                                   for i in warm))
            between = None if post_after_warmup is None else await self._post(client, post_after_warmup)
            warmup_end = self.clock()
            stop = asyncio.Event()
            scraper = None
            if metrics_interval_s:
                scraper = asyncio.create_task(
                    scrape(client, "/metrics", metrics_interval_s, stop, samples, self.clock))
            measured = [i for i, a in enumerate(arrivals) if not a.warmup]
            t0 = self.clock()
            if hooks is not None:
                hooks.window_started(RUN, t0)
            if tracker is not None:
                tracker.measured_started(t0)
            tasks = []
            try:
                for i in measured:
                    a = arrivals[i]
                    delay = t0 + a.offset_s - self.clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    records[i].scheduled_s = t0 + a.offset_s
                    tasks.append(asyncio.create_task(
                        self._send(client, a, prompts[i], records[i], semaphore, tracker)))
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                end = self.clock()
                ends = [records[i].end_s for i in measured if records[i].end_s is not None]
                measured_end = max(ends) if ends else end
                if tracker is not None:
                    tracker.abandon()
                if hooks is not None:
                    hooks.window_ended(RUN, measured_end)
                stop.set()
                if scraper is not None:
                    await scraper
        return LoadRun(records, warmup_end, t0, measured_end, samples, between)

    async def _post(self, client: aiohttp.ClientSession, path: str) -> dict[str, Any]:
        """POST `path`; passed only on a 200 whose JSON, if any, does not say `"success": false`."""
        try:
            async with client.post(path, timeout=aiohttp.ClientTimeout(total=60)) as response:
                text = (await response.read()).decode("utf-8", "replace")
                passed = response.status == 200
                try:
                    data = json.loads(text) if text.strip() else None
                except ValueError:
                    data = None
                if passed and isinstance(data, dict) and data.get("success") is False:
                    passed = False
                return {"path": path, "passed": passed, "detail": f"HTTP {response.status}: {text[:200]}".strip()}
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return {"path": path, "passed": False, "detail": f"{type(exc).__name__}: {exc}"}

    async def _send(self, client: aiohttp.ClientSession, arrival: Arrival, prompt: str, record: RequestRecord,
                    semaphore: asyncio.Semaphore | None, tracker: SteadyTracker | None) -> None:
        if semaphore is None:
            await self._stream(client, arrival, prompt, record, tracker)
            return
        async with semaphore:
            await self._stream(client, arrival, prompt, record, tracker)

    async def _stream(self, client: aiohttp.ClientSession, arrival: Arrival, prompt: str, record: RequestRecord,
                      tracker: SteadyTracker | None) -> None:
        body = {**self.body, "model": self.model, "prompt": prompt, "max_tokens": arrival.output_tokens,
                "stream": True, "stream_options": {"include_usage": True}}
        if self.generation_config is not None:
            n = arrival.output_tokens
            body["generation_config"] = json.dumps({**self.generation_config, "min_new_tokens": n, "max_new_tokens": n})
        clock = self.clock
        record.send_s = clock()
        if tracker is not None:
            tracker.sent(record.send_s)
        try:
            await asyncio.wait_for(self._read(client, body, record, tracker), timeout=self.request_timeout_s)
        except asyncio.TimeoutError:
            record.error = f"no complete answer within {self.request_timeout_s:g} s"
        except aiohttp.ClientError as exc:
            record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except (ValueError, KeyError, TypeError) as exc:  # a chunk that is not the JSON it should be
            record.error = f"malformed stream: {exc}"
        except asyncio.CancelledError:
            record.error = "cancelled before it was answered"
            record.status = "error"
            record.end_s = clock()
            raise
        record.end_s = clock()
        if self.text_chunks and record.error is None and record.chunk_tokens:
            missing = (record.server_output_tokens or 0) - record.output_tokens
            if missing > 0:
                record.chunk_tokens[-1] += missing
                record.output_tokens += missing
                record.merged_tokens = missing
        if record.error is None and record.first_token_s is None:
            record.error = "the stream ended without any output"
        record.status = OK if record.error is None else "error"
        if tracker is not None:
            tracker.finished(record.end_s)

    async def _read(self, client: aiohttp.ClientSession, body: dict[str, Any], record: RequestRecord,
                    tracker: SteadyTracker | None) -> None:
        clock = self.clock
        async with client.post(COMPLETIONS, json=body) as response:
            record.http_status = response.status
            if response.status != 200:
                text = (await response.read()).decode("utf-8", "replace")
                record.error = f"HTTP {response.status}: {text[:ERROR_TEXT_LIMIT]}"
                return
            buffer = b""
            done = False
            async for data in response.content.iter_any():
                t = clock()
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue  # SSE comments and other fields
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            done = True
                            continue
                        self._chunk(json.loads(payload), t, record, tracker)
            if not done and record.error is None and record.finish_reason is None:
                # a stream may end without [DONE] (transformers serve) once a choice has finished, never before
                record.error = "the stream was cut off before [DONE]"

    @staticmethod
    def _chunk(data: dict[str, Any], t: float, record: RequestRecord, tracker: SteadyTracker | None) -> None:
        if "error" in data and not data.get("choices"):
            raise ValueError(f"server error in stream: {str(data['error'])[:ERROR_TEXT_LIMIT]}")
        choices = data.get("choices")
        if choices:
            choice = choices[0]
            if choice.get("finish_reason"):
                record.finish_reason = choice["finish_reason"]
            ids = choice.get("token_ids")
            if isinstance(ids, list):
                n = len(ids)
            else:  # one token per chunk, except a closing chunk with no text (transformers serve sends one)
                n = 0 if choice.get("finish_reason") and choice.get("text") == "" else 1
            if n and record.first_token_s is None:
                record.first_token_s = t
                if tracker is not None:
                    tracker.first_token(t)
            if n:
                record.chunk_times.append(t)
                record.chunk_tokens.append(n)
                record.output_tokens += n
        usage = data.get("usage")
        if usage:
            record.server_output_tokens = usage.get("completion_tokens")
            record.server_prompt_tokens = usage.get("prompt_tokens")
