"""Serving scenario: load an OpenAI-compatible server over time and attribute energy to tokens and requests.

One module per concern: `schedule` (arrival times), `client` (the asyncio load generator),
`records` (what each request recorded), `steady` (the steady window), `figures` (latency
and throughput), `energy` (energy attribution), `metrics` (the server's /metrics),
`checks` (validity), `section` (the result's `serving` section) and `server` (starting
and stopping an engine's server process).
"""

from llem.serving.client import LoadRun, ServingClient, request_body
from llem.serving.records import RequestRecord
from llem.serving.schedule import Arrival, build_schedule, gamma_offsets, open_loop_schedule, trace_schedule
from llem.serving.section import serving_section
from llem.serving.steady import SteadyRule, SteadyTracker, SteadyWindow, steady_rule, steady_window

__all__ = [
    "Arrival",
    "build_schedule",
    "LoadRun",
    "RequestRecord",
    "ServingClient",
    "SteadyRule",
    "SteadyTracker",
    "SteadyWindow",
    "gamma_offsets",
    "open_loop_schedule",
    "request_body",
    "serving_section",
    "steady_rule",
    "steady_window",
    "trace_schedule",
]
