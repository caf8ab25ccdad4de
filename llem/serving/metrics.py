"""The server's own view of its load: `vllm:num_requests_running` read from Prometheus `/metrics`.

The closed-loop check compares it with the concurrency the client asked for: a client that
keeps B requests open proves nothing if the server only ever runs fewer of them at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

RUNNING_METRIC = "vllm:num_requests_running"


def parse_gauge(text: str, name: str = RUNNING_METRIC) -> float | None:
    """Sum of a gauge over all its label sets in Prometheus text; None when the server does not export it."""
    total: float | None = None
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest and rest[0] not in " {":
            continue  # another metric whose name starts the same
        try:
            value = float(rest.rsplit(None, 1)[-1]) if "}" not in rest else float(rest.split("}", 1)[1].split()[0])
        except (ValueError, IndexError):
            continue
        total = value if total is None else total + value
    return total


@dataclass
class MetricsSamples:
    """Running requests over time, and why there are none when the server would not say."""

    times: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    unavailable_reason: str | None = None

    def mean_between(self, start: float, end: float) -> float | None:
        inside = [v for t, v in zip(self.times, self.running) if start <= t <= end]
        return sum(inside) / len(inside) if inside else None

    def count_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t <= end)


async def scrape(client: aiohttp.ClientSession, url: str, interval_s: float, stop: asyncio.Event,
                 samples: MetricsSamples, clock: Callable[[], float] = time.monotonic) -> None:
    """Read `url` every `interval_s` until `stop` is set; a server without the gauge leaves a reason."""
    while not stop.is_set():
        try:
            timeout = aiohttp.ClientTimeout(total=max(interval_s, 1.0))
            asked = clock()
            async with client.get(url, timeout=timeout) as response:
                text = await response.text()
                t = (asked + clock()) / 2  # the server read its gauge somewhere in between
            if response.status != 200:
                samples.unavailable_reason = f"GET {url} answered HTTP {response.status}"
            else:
                value = parse_gauge(text)
                if value is None:
                    samples.unavailable_reason = f"{url} does not export {RUNNING_METRIC}"
                else:
                    samples.times.append(t)
                    samples.running.append(value)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            samples.unavailable_reason = f"GET {url} failed: {type(exc).__name__}: {exc}"
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except asyncio.TimeoutError:
            pass


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
