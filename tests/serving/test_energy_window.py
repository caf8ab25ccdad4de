"""A fake GPU whose power steps up by a known amount inside the steady window: the serving energy figures
must find that step's energy (and only it, above idle) to within 1 %."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llem.config.serving import LoadConfig
from llem.energy import adjust_window, measure_baseline, open_monitor
from llem.serving import ServingClient, SteadyTracker, open_loop_schedule, serving_section, steady_rule
from llem.serving.energy import MonitorWindows, window_energy
from llem.serving.steady import RUN, STEADY
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml
from tests.serving.fake_server import FakeServer

IDLE_W, STEP_W = 100.0, 400.0
STEP_START, STEP_END = 0.5, 0.9  # seconds after the load starts: inside the steady window


def test_a_square_power_step_inside_the_steady_window_is_attributed_to_its_tokens(tmp_path: Path) -> None:
    t0 = [float("inf")]  # when the load starts, on the monotonic clock

    def power_w(t: float) -> float:
        return STEP_W if t0[0] + STEP_START <= t < t0[0] + STEP_END else IDLE_W

    def energy_mj(t: float) -> int:
        start, end = t0[0] + STEP_START, t0[0] + STEP_END
        stepped = 0.0 if t <= start else min(t, end) - start  # seconds of the step before t
        return int(1000 * (IDLE_W * t + (STEP_W - IDLE_W) * stepped))

    nv = FakeNvml([FakeGpu(energy_mj=energy_mj, power_mw=lambda t: int(1000 * power_w(t)))], clock=time.monotonic)
    monitor = open_monitor("nvml", [0], include_host=False, nvml_module=nv, rapl_root=tmp_path, environ={},
                           interval_s=0.01, measure_update_period=False)
    try:
        baseline = measure_baseline(monitor, 0.2)
        n, b = 24, 2
        arrivals = open_loop_schedule(n, 2, 8, rate=float("inf"), burstiness=1.0, seed=0)
        rule = steady_rule(rate=float("inf"), max_concurrency=b, trace=False, num_requests=n, server_batch=None)
        hooks = MonitorWindows(monitor)
        tracker = SteadyTracker(rule, hooks)
        with FakeServer(ttft_s=0.02, itl_s=0.02) as server:
            t0[0] = time.monotonic()
            run = ServingClient(server.url, "fake").run(arrivals, ["p"] * len(arrivals), max_concurrency=b,
                                                        tracker=tracker)
    finally:
        monitor.close()
    assert tracker.start_s is not None and tracker.end_s is not None
    assert tracker.start_s < t0[0] + STEP_START and tracker.end_s > t0[0] + STEP_END, "the step must be inside"
    steady_w, run_w = hooks.windows[STEADY], hooks.windows[RUN]
    steady_e = window_energy(steady_w, adjust_window(steady_w, baseline, monitor.baseline_key))
    run_e = window_energy(run_w, adjust_window(run_w, baseline, monitor.baseline_key))
    step_j = (STEP_W - IDLE_W) * (STEP_END - STEP_START)
    assert steady_e.above_idle_j == pytest.approx(step_j, rel=0.01)
    assert steady_e.joules == pytest.approx(IDLE_W * steady_w.duration_s + step_j, rel=0.01)
    assert steady_w.duration_s == pytest.approx(tracker.end_s - tracker.start_s, abs=0.01)
    section = serving_section(run, rule, load=LoadConfig(max_concurrency=b, num_requests=n), slo=None,
                              min_steady_seconds=0.5, steady_energy=steady_e, run_energy=run_e)
    tokens = section["steady"]["output_tokens"]
    assert tokens > 0
    assert section["energy"]["j_per_output_token"] == pytest.approx(step_j / tokens, rel=0.01)
    assert section["energy"]["j_per_request"] == pytest.approx(step_j / tokens * 8, rel=0.01)
    assert section["energy"]["run"]["energy_above_idle_j"] == pytest.approx(step_j, rel=0.01)
    assert section["energy"]["run"]["j_per_output_token"] == pytest.approx(step_j / (n * 8), rel=0.01)
