"""The serving scenario's settings: the load (`load.*`), the server (`serving.*`) and latency targets (`slo.*`).

Everything that can be checked without starting a server is checked here, at validation
time, so a bad load point fails while the campaign is planned rather than after a server
has spent minutes starting: non-positive rates, a rate beside a trace, a trace file that is
missing or malformed, and an engine for which llem has no server to start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from llem.config._base import StrictModel

SCENARIOS = ("offline", "serving")
# Engines whose own OpenAI-compatible streaming server llem starts: vLLM's API server, trtllm-serve, and for PyTorch
# transformers' `serve` with continuous batching.
SERVER_ENGINES = ("vllm", "tensorrt", "pytorch")
TRACE_KEYS = ("offset_s", "input_tokens", "output_tokens")


class TraceProblem(ValueError):
    """A trace file that cannot be replayed; the message names the file and the line."""


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The trace's records (`offset_s`, `input_tokens`, `output_tokens`), sorted by arrival; TraceProblem if bad."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TraceProblem(f"trace file {str(p)!r} does not exist")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceProblem(f"trace file {str(p)!r} cannot be read ({exc})") from None
    records: list[dict[str, Any]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"trace file {str(p)!r}, line {n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceProblem(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise TraceProblem(f"{where}: expected an object with keys {', '.join(TRACE_KEYS)}")
        missing = [k for k in TRACE_KEYS if k not in item]
        if missing:
            raise TraceProblem(f"{where}: missing {', '.join(missing)} (each line needs {', '.join(TRACE_KEYS)})")
        offset = item["offset_s"]
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset) or offset < 0:
            raise TraceProblem(f"{where}: offset_s must be a number of seconds >= 0, got {offset!r}")
        for key in ("input_tokens", "output_tokens"):
            value = item[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TraceProblem(f"{where}: {key} must be a whole number >= 1, got {value!r}")
        records.append({"offset_s": float(offset), "input_tokens": item["input_tokens"],
                        "output_tokens": item["output_tokens"]})
    if not records:
        raise TraceProblem(f"trace file {str(p)!r} holds no requests")
    return sorted(records, key=lambda r: r["offset_s"])


class LoadConfig(StrictModel):
    """The requests sent to the server: how many, how fast, and how many at once."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    rate: float | None = Field(
        None,
        description="Open loop: requests per second (> 0), arrivals drawn from a gamma distribution (`inf`: all "
        "at once). "
        "null: `inf`, or the trace's own arrival times when `load.trace` is set.",
    )
    burstiness: float = Field(
        1.0,
        description="Gamma shape of the inter-arrival times, as in `vllm bench serve`: 1 is Poisson, larger is "
        "more regular (inf: evenly spaced), smaller is burstier; must be > 0.",
    )
    max_concurrency: int | None = Field(
        None,
        ge=1,
        description="Closed loop: most requests in flight at once; alone (with rate inf) or as a cap on a rate.",
    )
    num_requests: int | None = Field(
        None,
        ge=1,
        description="Measured requests. null: 100, or every line of `load.trace`; with a trace, its first N lines.",
    )
    warmup_requests: int = Field(
        8, ge=0, description="Requests sent and answered before the measured ones; not measured."
    )
    seed: int | None = Field(None, description="Seed of the arrival times (null: the experiment's `random_seed`).")
    trace: str | None = Field(
        None,
        description="JSON Lines file to replay, one request a line: `offset_s` (arrival after the start), "
        "`input_tokens`, `output_tokens`.",
    )

    @field_validator("rate")
    @classmethod
    def _positive_rate(cls, value: float | None) -> float | None:
        if value is not None and (math.isnan(value) or value <= 0):
            raise ValueError(f"must be > 0 requests per second, or inf for all at once (got {value!r})")
        return value

    @field_validator("burstiness")
    @classmethod
    def _positive_burstiness(cls, value: float) -> float:
        if math.isnan(value) or value <= 0:
            raise ValueError(f"must be > 0 (the gamma shape; 1 is Poisson, inf evenly spaced), got {value!r}")
        return value

    @model_validator(mode="after")
    def _rate_or_trace(self) -> "LoadConfig":
        if self.trace is None:
            return self
        if self.rate is not None:
            raise ValueError(
                f"load.rate ({self.rate}) and load.trace ({self.trace!r}) are both set; a trace brings its own "
                "arrival times: set one of them"
            )
        try:
            records = read_trace(self.trace)
        except TraceProblem as exc:
            raise ValueError(f"load.trace: {exc}") from None
        if self.num_requests is not None and self.num_requests + self.warmup_requests > len(records):
            raise ValueError(
                f"load.trace holds {len(records)} requests, fewer than load.warmup_requests + load.num_requests "
                f"({self.warmup_requests} + {self.num_requests})"
            )
        if self.num_requests is None and self.warmup_requests >= len(records):
            raise ValueError(
                f"load.trace holds {len(records)} requests, no more than load.warmup_requests "
                f"({self.warmup_requests}): nothing would be measured"
            )
        return self

    @property
    def effective_rate(self) -> float:
        """Requests per second of an open loop; inf when unset (all at once)."""
        return math.inf if self.rate is None else self.rate

    @property
    def closed_loop(self) -> bool:
        """True when concurrency, not arrival times, paces the load (a cap with no finite rate and no trace)."""
        return self.max_concurrency is not None and self.trace is None and math.isinf(self.effective_rate)


class ServingConfig(StrictModel):
    """The server the load goes to and what makes a load point valid."""

    url: str | None = Field(
        None,
        description="Base URL (`http://HOST:PORT`) of a server llem did not start; nothing is started or stopped. "
        "null: llem starts the engine's own server on a free loopback port.",
    )
    gpus: list[int | str] | None = Field(
        None,
        description="With `serving.url`: the GPUs the server runs on (CUDA index or UUID), for its energy. "
        "null: energy is null with the reason.",
    )
    min_steady_seconds: float = Field(
        30.0, ge=0.0, description="Shortest steady window for a valid load point."
    )
    ready_timeout_seconds: float = Field(
        600.0, gt=0.0, description="How long a started server may take to answer `/health`."
    )
    request_timeout_seconds: float = Field(
        600.0, gt=0.0, description="Longest a single request may take before it counts as an error."
    )
    metrics_interval_seconds: float = Field(
        1.0, gt=0.0, le=60.0, description="How often the server's `/metrics` are read (running requests)."
    )
    saturation_fraction: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Closed loop: the steady window's mean running requests must reach this share of the "
        "concurrency.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected http://HOST:PORT, got {value!r}")
        return value.rstrip("/") if value is not None else None

    @model_validator(mode="after")
    def _gpus_need_url(self) -> "ServingConfig":
        if self.gpus is not None and self.url is None:
            raise ValueError("serving.gpus names the GPUs of a server llem did not start; it needs serving.url")
        return self


class SloConfig(StrictModel):
    """Latency targets a request must all meet to count towards goodput (unset targets are not checked)."""

    ttft_ms: float | None = Field(None, gt=0.0, description="Largest time to first token, ms.")
    tpot_ms: float | None = Field(None, gt=0.0, description="Largest time per output token after the first, ms.")
    e2e_ms: float | None = Field(None, gt=0.0, description="Largest end-to-end latency, ms.")


SERVING_SECTIONS = ("load", "serving", "slo")


def fill_serving_defaults(data: Any) -> Any:
    """Before validation: a serving experiment given without load/serving/slo gets their defaults."""
    if isinstance(data, dict) and data.get("scenario") == "serving":
        data = dict(data)
        for key in SERVING_SECTIONS:
            if data.get(key) is None:
                data[key] = {}
    return data


def check_scenario(scenario: str, backend_name: str, load: Any, serving: ServingConfig | None,
                   slo: Any) -> None:
    """Cross-field rules of the scenario (raised as ValueError inside the experiment's validator)."""
    if scenario == "offline":
        given = [k for k, v in (("load", load), ("serving", serving), ("slo", slo)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only used with scenario=serving (the scenario is offline)")
        return
    if serving is not None and serving.url is None and backend_name not in SERVER_ENGINES:
        raise ValueError(
            f"scenario=serving: backend '{backend_name}' has no server llem can start (it starts "
            f"{', '.join(SERVER_ENGINES)}'s own OpenAI-compatible server); use one of those backends, or point "
            "serving.url at a server that is already running"
        )
