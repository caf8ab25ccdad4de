"""scripts/gpu_check.py on this GPU-less machine: its arithmetic, verdicts and report, and whole
checks run against the scripted fake NVML with a fake GPU load and fake experiments."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from tests.fakes.fake_pynvml import FakeClock, FakeGpu, FakeNvml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", mod)
    spec.loader.exec_module(mod)
    return mod


gc = _load()


# ---------------------------------------------------------------------- arithmetic


def test_cv_and_relative_difference_by_hand() -> None:
    # 99, 100, 101: sd 1 (n - 1), mean 100 -> 1 %
    assert gc.cv_pct([99.0, 100.0, 101.0]) == pytest.approx(1.0)
    assert gc.cv_pct([5.0]) is None and gc.cv_pct([0.0, 0.0]) is None
    assert gc.diff_pct(103.0, 100.0) == pytest.approx(3.0) and gc.diff_pct(97.0, 100.0) == pytest.approx(3.0)
    assert gc.diff_pct(None, 1.0) is None and gc.diff_pct(1.0, 0.0) is None


def test_square_wave_windows_hold_whole_periods() -> None:
    assert gc.whole_periods(5.0, 0.025) and gc.whole_periods(5.0, 0.25) and gc.whole_periods(0.5, 0.01)
    assert not gc.whole_periods(5.0, 0.3) and not gc.whole_periods(0.005, 0.01)


def test_square_wave_row_and_verdict() -> None:
    row = gc.square_wave_row(10.0, [100.0, 101.0, 99.0], [90.0, 91.0, 89.0], 0.49)
    assert row["counter_mean_j"] == pytest.approx(100.0) and row["counter_cv_pct"] == pytest.approx(1.0)
    assert row["polled_vs_counter_pct"] == pytest.approx(10.0) and row["achieved_duty"] == 0.49
    quiet = gc.square_wave_row(43.0, [100.0, 100.2, 99.8], [None, None, None], reference_j=[99.0, 99.5, 99.0])
    assert quiet["polled_mean_j"] is None and quiet["counter_cv_pct"] == pytest.approx(0.2)
    assert quiet["counter_vs_reference_pct"] == pytest.approx(100 / 99.1666 * 100 - 100, abs=0.01)
    assert gc.square_wave_outcome([quiet]).verdict == gc.PASS
    # a steady counter 10 % above the reference: its CV alone would pass
    biased = gc.square_wave_row(43.0, [110.0, 110.2, 109.8], [None] * 3, reference_j=[100.0, 100.0, 100.1])
    bad = gc.square_wave_outcome([quiet, biased])
    assert bad.verdict == gc.FAIL and "counter off the reference at 43 ms (10.0 %)" in bad.detail
    no_ref = gc.square_wave_row(43.0, [100.0, 100.2, 99.8], [None] * 3, reference_j=[None, 99.0, 99.0])
    assert gc.square_wave_outcome([no_ref]).verdict == gc.FAIL
    noisy = gc.square_wave_row(10.0, [100.0, 101.0, 99.0], [None] * 3, reference_j=[100.0, 100.0, 100.0])
    failed = gc.square_wave_outcome([quiet, noisy])  # CV exactly 1 % is not below 1 %
    assert failed.verdict == gc.FAIL and "noisy at 10 ms" in failed.detail
    assert gc.square_wave_outcome([gc.square_wave_row(50.0, [1.0], [1.0])]).verdict == gc.FAIL
    assert gc.square_wave_outcome([]).verdict == gc.FAIL


def test_square_wave_periods_must_not_alias_the_sensor_cycle() -> None:
    assert all(gc.aliases_sensor(p) for p in (10.0, 20.0, 25.0, 50.0, 100.0, 200.0, 500.0))
    assert not any(gc.aliases_sensor(p) for p in gc.parser().parse_args([]).square_periods_ms)
    assert not gc.aliases_sensor(250.0) and not gc.aliases_sensor(37.0)
    assert gc.periods_window_s(1.0, 0.043) == pytest.approx(23 * 0.043)
    assert gc.periods_window_s(0.01, 0.043) == pytest.approx(0.043)


def test_instant_power_integral_by_hand() -> None:
    samples = [(0.0, 100.0), (1.0, 200.0), (2.0, 200.0)]
    assert gc.integrate(samples, 0.0, 2.0) == pytest.approx(350.0)
    assert gc.integrate(samples, 0.5, 1.5) == pytest.approx(0.5 * (150 + 200) / 2 + 0.5 * 200)
    assert gc.integrate(samples, -0.1, 1.0) is None and gc.integrate(samples, 1.0, 2.5) is None


def test_settle_time_by_hand() -> None:
    times = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    watts = [90.0, 75.0, 66.0, 61.0, 60.5, 60.0, 60.0]
    assert gc.settle_time_s(times, watts) == (4.0, 60.0)  # 61 W is within 2 % of 60 W, 66 W is not
    rows = [{"t_s": t, "watts": w} for t, w in zip(times, watts)]
    ok = gc.settle_outcome(rows)
    assert ok.verdict == gc.PASS and ok.measured == "settles in 4.0 s" and "50.0 % off the settled 60 W" in ok.detail
    slow = gc.settle_outcome([{"t_s": t * 2, "watts": w} for t, w in zip(times, watts)])
    assert slow.verdict == gc.FAIL and "baseline.settle_seconds ≥ 8" in slow.detail
    drifting = gc.settle_outcome([{"t_s": t, "watts": 100.0 - 5 * t} for t in times])
    assert drifting.verdict == gc.FAIL and "still drifting" in drifting.detail


def test_abba_order_and_overhead() -> None:
    assert gc.abba(2) == [False, True, True, False]
    order = gc.abba(3)
    assert len(order) == 6 and order.count(True) == 3
    assert gc.overhead_pct([1.02, 1.01, 1.03], [1.0, 1.0, 0.9]) == pytest.approx(2.0)
    assert gc.overhead_pct([], [1.0]) is None
    assert gc.observer_outcome([1.005, 1.004], [1.0, 1.0]).verdict == gc.PASS
    assert gc.observer_outcome([1.02, 1.02], [1.0, 1.0]).verdict == gc.FAIL


# ---------------------------------------------------------------------- verdicts


def test_update_period_verdict() -> None:
    assert gc.update_period_outcome({"gpu0": 0.1, "gpu1": 0.02}).verdict == gc.PASS
    slow = gc.update_period_outcome({"gpu0": 1.5})
    assert slow.verdict == gc.FAIL and "gpu0" in slow.detail
    stuck = gc.update_period_outcome({"gpu0": 0.1, "gpu1": None})
    assert stuck.verdict == gc.FAIL and "gpu1" in stuck.detail


def test_agreement_verdict() -> None:
    rows = [
        {"mode": "steady", "window_s": 2.0, "device": "gpu0", "diff_pct": 0.8, "polled_source": "instant"},
        {"mode": "load at window start", "window_s": 2.0, "device": "gpu0", "diff_pct": 2.9,
         "polled_source": "instant"},
    ]  # fmt: skip
    ok = gc.agreement_outcome(rows)
    assert ok.verdict == gc.PASS and ok.measured == "worst 2.90 %" and "instant" in ok.detail
    lagging = [*rows, {"mode": "load at window start", "window_s": 5.0, "device": "gpu0", "diff_pct": 7.5}]
    bad = gc.agreement_outcome(lagging)
    assert bad.verdict == gc.FAIL and "load at window start 5 s gpu0" in bad.detail
    assert gc.agreement_outcome([{**rows[0], "diff_pct": None}]).verdict == gc.FAIL


def test_baseline_verdict() -> None:
    states = {
        "no_context": {"gpu0": 60.0},
        "context_alloc": {"gpu0": 70.0},
        "loaded_right_after_load": {"gpu0": 71.0},
        "loaded_after_cooldown": {"gpu0": 70.5},
    }
    ok = gc.baseline_outcome(states)
    assert ok.verdict == gc.PASS and "16.7 %" in ok.detail  # 70 against 60 W: the context's own cost
    hot = gc.baseline_outcome({**states, "loaded_right_after_load": {"gpu0": 80.0}})
    assert hot.verdict == gc.FAIL and "settle_seconds" in hot.detail  # 80 against 70.5 W: 13.5 %
    heavy = gc.baseline_outcome(
        {**states, "loaded_after_cooldown": {"gpu0": 75.0}, "loaded_right_after_load": {"gpu0": 75.0}}
    )
    assert heavy.verdict == gc.FAIL and "bare context" in heavy.detail  # 75 against 70 W: 7.1 %
    missing = gc.baseline_outcome({**states, "loaded_after_cooldown": {"gpu0": None}})
    assert missing.verdict == gc.FAIL and "not measured" in missing.detail
    assert gc.baseline_outcome({**states, "no_context": None}).verdict == gc.PASS  # only reported
    # judged per GPU: the engine's GPU 10 % up is not hidden by seven idle GPUs in a sum
    eight = {s: {f"gpu{k}": 70.0 for k in range(8)} for s in gc.BASELINE_STATES}
    eight["loaded_after_cooldown"] = {**eight["loaded_after_cooldown"], "gpu0": 77.0}
    eight["loaded_right_after_load"] = dict(eight["loaded_after_cooldown"])
    per_gpu = gc.baseline_outcome(eight)
    assert per_gpu.verdict == gc.FAIL and "bare context by 10.0 % on gpu0" in per_gpu.detail


def test_repeatability_and_convergence_verdicts() -> None:
    assert gc.repeatability_outcome([1.0, 1.01, 0.99, 1.0, 1.0]).verdict == gc.PASS
    assert gc.repeatability_outcome([1.0, 1.05, 0.95]).verdict == gc.FAIL  # CV 5 %
    assert gc.repeatability_outcome([1.0, None, 1.0]).verdict == gc.FAIL
    converged = gc.convergence_outcome({16: 1.10, 64: 1.01, 256: 1.0})
    assert converged.verdict == gc.PASS and "16: 10 %" in converged.measured
    assert gc.convergence_outcome({16: 1.0, 64: 1.05, 256: 1.0}).verdict == gc.FAIL
    assert gc.convergence_outcome({16: 1.0}).verdict == gc.FAIL


def test_ttft_and_scope_verdicts() -> None:
    assert gc.ttft_share(900.0, 1000.0) == pytest.approx(0.9) and gc.ttft_share(None, 1.0) is None
    same_clock = gc.ttft_outcome({"pytorch": 0.90, "vllm": 0.88})
    assert same_clock.verdict == gc.PASS
    # PyTorch timing TTFT from its own batch start: a small share, whatever the engines' speed
    assert gc.ttft_outcome({"pytorch": 0.02, "vllm": 0.88}).verdict == gc.FAIL
    assert gc.ttft_outcome({"pytorch": 0.9, "vllm": None}).verdict == gc.FAIL
    own = {"devices": ["gpu0"], "per_token_j": 1.0}
    assert gc.scope_outcome(own, {"devices": ["gpu0"], "per_token_j": 1.01}).verdict == gc.PASS
    whole_node = gc.scope_outcome({"devices": ["gpu0", "gpu1"], "per_token_j": 1.9}, own)
    assert whole_node.verdict == gc.FAIL and "other GPUs" in whole_node.detail
    assert gc.scope_outcome(own, {"devices": ["gpu0"], "per_token_j": 1.1}).verdict == gc.FAIL


def test_selection_budgets_and_exit_codes() -> None:
    args = gc.parser().parse_args(["--budget", "square-wave=12"])
    assert [c.name for c in gc.select_checks(None, None)] == list(gc.CHECK_NAMES)
    chosen = gc.select_checks(["square-wave", "update-period"], ["square-wave"])
    assert [c.name for c in chosen] == ["update-period"]
    with pytest.raises(ValueError, match="unknown check nope"):
        gc.select_checks(["nope"], None)
    by_name = {c.name: c for c in gc.CHECKS}
    assert gc.budget_for(by_name["square-wave"], args) == 12.0
    # default: 5 periods x (3 s warmup + 5 x (~5 s of whole periods + up to a period of phase)) = 142.2 s
    # expected -> 142.2 x 1.5 + 60
    assert gc.budget_for(by_name["square-wave"], gc.parser().parse_args([])) == 274.0
    result = lambda verdict: gc.CheckResult("x", "x", verdict, "", "", "", 0.0, 1.0)  # noqa: E731
    assert gc.exit_code([result(gc.PASS), result(gc.SKIP)]) == gc.EXIT_OK
    assert gc.exit_code([result(gc.PASS), result(gc.ERROR)]) == gc.EXIT_FAILED
    assert gc.exit_code([result(gc.FAIL)]) == gc.EXIT_FAILED


def test_budget_stops_a_check_before_a_step_that_does_not_fit() -> None:
    clock = FakeClock()
    run = gc.Run(10.0, clock)
    run.need(9.0, "a window")
    clock.advance(4.0)
    with pytest.raises(gc.OutOfTime, match="before the next window"):
        run.need(7.0, "the next window")


def test_tables_show_verdicts_and_figures() -> None:
    results = [
        gc.CheckResult("update-period", "Energy counter update period", gc.PASS, "gpu0 100 ms", "≤ 1 s", "",
                       1.2, 69.0, [{"device": "gpu0", "period_s": 0.1, "each_s": [0.1, 0.1]}]),
        gc.CheckResult("cross-engine-ttft", "Cross-engine TTFT", gc.SKIP, "—", "", "vLLM is not installed",
                       0.0, 420.0),
    ]  # fmt: skip
    console = Console(record=True, width=220)
    console.print(gc.summary_table(results))
    console.print(gc.figures_table(results[0]))
    text = console.export_text()
    assert "PASS" in text and "SKIP" in text and "vLLM is not installed" in text and "1 / 69 s" in text
    assert "0.1, 0.1" in text and gc.figures_table(results[1]) is None


# ---------------------------------------------------------------------- whole checks on fakes


class PowerTrace:
    """Board power over real time, piecewise: constant, or a square wave; energy is its exact integral."""

    def __init__(self, watts: float) -> None:
        self._lock = threading.Lock()
        # (start, high W, low W, square-wave period or None for constant, duty)
        self._segments: list[tuple[float, float, float, float | None, float]] = []
        self.set(watts)

    def set(self, watts: float) -> None:
        self._push((time.monotonic(), watts, watts, None, 1.0))

    def square(self, high: float, low: float, period_s: float, duty: float) -> None:
        self._push((time.monotonic(), high, low, period_s, duty))

    def _push(self, segment: tuple[float, float, float, float | None, float]) -> None:
        with self._lock:
            self._segments.append(segment)

    @staticmethod
    def _on_time(dt: float, period: float | None, duty: float) -> float:
        if period is None:
            return dt
        whole, rest = divmod(dt, period)
        return whole * duty * period + min(rest, duty * period)

    def watts(self, t: float) -> float:
        with self._lock:
            start, high, low, period, duty = [s for s in self._segments if s[0] <= t][-1]
        if period is None:
            return high
        return high if ((t - start) % period) < duty * period else low

    def energy_mj(self, t: float) -> int:
        with self._lock:
            segments = list(self._segments)
        joules = 0.0
        for k, (start, high, low, period, duty) in enumerate(segments):
            end = min(t, segments[k + 1][0]) if k + 1 < len(segments) else t
            if end <= start:
                break
            on = self._on_time(end - start, period, duty)
            joules += high * on + low * (end - start - on)
        return int(joules * 1000)


class FakeLoad:
    def __init__(self, work: FakeWork, period_s: float | None, duty: float) -> None:
        self.work, self.period_s, self.duty = work, period_s, duty

    def start(self) -> None:
        w = self.work
        if self.period_s is None:
            w.trace.set(w.busy_w)
        else:
            w.trace.square(w.busy_w, w.idle_level(), self.period_s, self.duty)
        w.loads.append((self.period_s, self.duty))

    def stop(self) -> dict[str, Any]:
        self.work.trace.set(self.work.idle_level())
        return {"achieved_duty": self.duty}


class FakeWork:
    """GPU work that only moves the fake board's power."""

    def __init__(self, trace: PowerTrace, idle_w: float = 60.0, context_w: float = 10.0, busy_w: float = 300.0):
        self.trace, self.idle_w, self.context_w, self.busy_w = trace, idle_w, context_w, busy_w
        self.context = False
        self.loads: list[tuple[float | None, float]] = []

    def idle_level(self) -> float:
        return self.idle_w + (self.context_w if self.context else 0.0)

    def problem(self) -> str | None:
        return None

    def context_exists(self) -> bool:
        return self.context

    def hold_memory(self, indices: list[int], nbytes: int) -> None:
        self.context = True
        self.trace.set(self.idle_level())

    def release_memory(self) -> None:
        self.trace.set(self.idle_level())

    def load(self, indices: list[int], matrix: int, period_s: float | None = None, duty: float = 1.0) -> FakeLoad:
        return FakeLoad(self, period_s, duty)


def _fake_gpus(trace: PowerTrace, count: int = 1, instant_scale: float = 1.0) -> FakeNvml:
    gpus = [
        FakeGpu(energy_mj=trace.energy_mj, instant_power_mw=lambda t: trace.watts(t) * 1000 * instant_scale)
        for _ in range(count)
    ]
    return FakeNvml(gpus, clock=time.monotonic)


FAST = [
    "--interval-ms", "10", "--windows", "0.4", "--warmup-s", "0.05", "--idle-gap-s", "0.05",
    "--baseline-s", "0.2", "--settle-s", "0.02", "--cooldown-s", "0.3",
    "--square-periods-ms", "17,43", "--square-window-s", "0.4", "--square-repeats", "3",
    "--hot-s", "0.2", "--settle-step-s", "0.1", "--settle-max-s", "0.8",
]  # fmt: skip


# Against the fake board, the reference thread shares two busy cores with everything else: fewer edges per
# window keep its sampling error (a few ms at each edge) well inside the 3 % tolerance.
SLOW_WAVES = ["--square-periods-ms", "130,230"]


def _main(argv: list[str], rig: Any) -> tuple[int, str]:
    console = Console(record=True, width=240)
    code = gc.main(argv, rig=rig, console=console)
    return code, console.export_text()


def test_update_period_on_a_stepping_counter(tmp_path: Path) -> None:
    clock = FakeClock(10.0)
    gpu = FakeGpu(energy_mj=lambda t: int(250_000 * t), energy_update_period_s=0.1)
    nv = FakeNvml([gpu], clock=clock, call_latency_s=0.002)
    out = tmp_path / "report.json"
    code, text = _main(["--only", "update-period", "--json", str(out)], gc.Rig(nvml=nv, environ={}, clock=clock))
    assert code == gc.EXIT_OK and "PASS" in text
    data = json.loads(out.read_text())
    assert data["exit_code"] == 0 and list(data["devices"]) == ["gpu0"]
    (check,) = data["checks"]
    assert check["name"] == "update-period" and check["verdict"] == "pass"
    (row,) = check["rows"]
    assert row["period_s"] == pytest.approx(0.1, abs=0.003) and len(row["each_s"]) == 3
    assert row["counter_read_ms"] == pytest.approx(2.0)  # the fake's latency per call
    assert data["thresholds"]["max_update_period_s"] == 1.0
    assert nv.initialised == 0  # NVML released


def test_a_counter_that_never_moves_fails(tmp_path: Path) -> None:
    clock = FakeClock(10.0)
    nv = FakeNvml([FakeGpu(energy_mj=5_000)], clock=clock, call_latency_s=0.01)
    rig = gc.Rig(nvml=nv, environ={}, clock=clock)
    code, text = _main(["--only", "update-period", "--period-timeout-s", "0.2"], rig)
    assert code == gc.EXIT_FAILED and "FAIL" in text and "did not move" in text


def test_steady_power_agrees_on_a_truthful_board() -> None:
    trace = PowerTrace(60.0)
    work = FakeWork(trace)
    # 1 s windows: the step at the window start costs polled power up to (300 - 60) W x half a poll gap
    rig = gc.Rig(nvml=_fake_gpus(trace), environ={}, work=work)
    code, text = _main([*FAST, "--only", "steady-power", "--windows", "1"], rig)
    assert code == gc.EXIT_OK, text
    assert "load at window start" in text and "instant" in text
    assert work.loads == [(None, 1.0), (None, 1.0)]  # steady, then the step at the window start


def test_steady_power_fails_when_instant_power_reads_low(tmp_path: Path) -> None:
    trace = PowerTrace(60.0)
    out = tmp_path / "r.json"
    rig = gc.Rig(nvml=_fake_gpus(trace, instant_scale=0.9), environ={}, work=FakeWork(trace))
    code, _ = _main([*FAST, "--only", "steady-power", "--json", str(out)], rig)
    assert code == gc.EXIT_FAILED
    (check,) = json.loads(out.read_text())["checks"]
    assert check["verdict"] == "fail"
    assert all(r["diff_pct"] == pytest.approx(10.0, abs=1.5) for r in check["rows"])  # instant reads 10 % low


@pytest.mark.slow  # six 1 s windows in real time, as the check runs them
def test_square_wave_counter_is_steady(tmp_path: Path) -> None:
    trace = PowerTrace(100.0)
    work = FakeWork(trace, idle_w=100.0, busy_w=140.0)  # a small swing: a late wake-up moves energy little
    out = tmp_path / "r.json"
    rig = gc.Rig(nvml=_fake_gpus(trace), environ={}, work=work)
    # 1 s windows, so that a few ms of timing jitter in a window's length stay well below 1 %
    code, text = _main([*FAST, "--only", "square-wave", "--square-window-s", "1", *SLOW_WAVES, "--json", str(out)], rig)
    assert code == gc.EXIT_OK, text
    (check,) = json.loads(out.read_text())["checks"]
    assert [r["period_ms"] for r in check["rows"]] == [130.0, 230.0]
    for row in check["rows"]:
        # half the time at 140 W, half at 100 W: 120 J a second, over whole periods
        assert row["counter_mean_j"] == pytest.approx(120.0 * row["window_s"], rel=0.02) and row["counter_cv_pct"] < 1.0
        assert row["counter_vs_reference_pct"] < gc.SQUARE_WAVE_REFERENCE_PCT and row["reference_hz"] > 100
        assert len(set(row["phases_ms"])) == 3 and all(0 <= ph < row["period_ms"] for ph in row["phases_ms"])
    assert all(row["polled_mean_j"] is not None for row in check["rows"])  # reported beside the counter
    assert work.loads == [(0.13, 0.5), (0.23, 0.5)]


@pytest.mark.slow  # six 1 s windows in real time, as the check runs them
def test_square_wave_fails_for_a_counter_with_a_constant_bias(tmp_path: Path) -> None:
    trace = PowerTrace(100.0)
    out = tmp_path / "r.json"
    biased = FakeGpu(energy_mj=lambda t: int(trace.energy_mj(t) * 1.08),
                     instant_power_mw=lambda t: trace.watts(t) * 1000)  # fmt: skip
    rig = gc.Rig(nvml=FakeNvml([biased], clock=time.monotonic), environ={},
                 work=FakeWork(trace, idle_w=100.0, busy_w=140.0))  # fmt: skip
    code, text = _main([*FAST, "--only", "square-wave", "--square-window-s", "1", *SLOW_WAVES, "--json", str(out)], rig)
    assert code == gc.EXIT_FAILED, text
    (check,) = json.loads(out.read_text())["checks"]
    assert all(gc.SQUARE_WAVE_REFERENCE_PCT < r["counter_vs_reference_pct"] < 9.0 for r in check["rows"])  # 8 % high
    assert "counter off the reference" in check["detail"]


def test_square_wave_period_that_aliases_the_sensor_is_refused() -> None:
    trace = PowerTrace(60.0)
    rig = gc.Rig(nvml=_fake_gpus(trace), environ={}, work=FakeWork(trace))
    code, text = _main([*FAST, "--only", "square-wave", "--square-periods-ms", "25"], rig)
    assert code == gc.EXIT_FAILED and "divides the ~100 ms sensor cycle" in text


class SettlingWork(FakeWork):
    """A board whose idle power, after a load, falls 90 -> 70 -> 60 W over half a second."""

    def load(self, indices: list[int], matrix: int, period_s: float | None = None, duty: float = 1.0) -> FakeLoad:
        work = self

        class Cooling(FakeLoad):
            def stop(self) -> dict[str, Any]:
                work.trace.set(90.0)
                threading.Timer(0.2, work.trace.set, args=(70.0,)).start()
                threading.Timer(0.45, work.trace.set, args=(60.0,)).start()
                return {"achieved_duty": 1.0}

        return Cooling(self, period_s, duty)


def test_baseline_settle_reports_the_settle_time(tmp_path: Path) -> None:
    trace = PowerTrace(60.0)
    out = tmp_path / "r.json"
    rig = gc.Rig(nvml=_fake_gpus(trace), environ={}, work=SettlingWork(trace))
    code, text = _main([*FAST, "--only", "baseline-settle", "--json", str(out)], rig)
    assert code == gc.EXIT_OK, text
    (check,) = json.loads(out.read_text())["checks"]
    assert check["rows"][0]["watts"] == pytest.approx(90.0, rel=0.05)
    assert check["rows"][-1]["watts"] == pytest.approx(60.0, rel=0.01)
    settled = float(re.search(r"settles in ([\d.]+) s", check["measured"]).group(1))  # type: ignore[union-attr]
    assert 0.4 <= settled <= 0.75
    assert "off the settled" in check["detail"]


def test_json_is_written_after_each_check_so_a_cut_run_keeps_them(tmp_path: Path) -> None:
    trace = PowerTrace(60.0)

    class Killed(FakeWork):
        def load(self, *args: Any, **kwargs: Any) -> FakeLoad:
            raise KeyboardInterrupt  # what a slot's time limit does to the run

    out = tmp_path / "r.json"
    gpu = FakeGpu(energy_mj=lambda t: int(250_000 * t), energy_update_period_s=0.01,
                  instant_power_mw=lambda t: 250_000)  # fmt: skip
    rig = gc.Rig(nvml=FakeNvml([gpu], clock=time.monotonic), environ={}, work=Killed(trace))
    with pytest.raises(KeyboardInterrupt):
        _main([*FAST, "--only", "update-period,steady-power", "--period-timeout-s", "0.5", "--json", str(out)], rig)
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["planned"] == ["update-period", "steady-power"]
    assert [c["name"] for c in data["checks"]] == ["update-period"] and data["checks"][0]["verdict"] == "pass"
    assert data["exit_code"] is None


def test_budget_seconds_picks_checks_and_shortens_settings(tmp_path: Path) -> None:
    defaults = gc.parser().parse_args([])
    args = gc.parser().parse_args(["--budget-seconds", "200", "--square-repeats", "6"])
    chosen, left, shortened = gc.fit_budget(gc.CHECKS, args, 200.0, defaults)
    names = [c.name for c in chosen]
    assert names[:3] == ["update-period", "steady-power", "square-wave"] and "cross-engine-ttft" not in names
    assert {c.name for c in left} | set(names) == set(gc.CHECK_NAMES)
    assert "square_repeats" not in shortened and args.square_repeats == 6  # what the user set is kept
    assert "windows" in shortened and args.windows == [5.0]
    assert sum(gc.budget_for(c, args) for c in chosen) <= 200.0
    # whole run on fakes: what is left out is reported as skipped, with the reason
    trace = PowerTrace(60.0)
    out = tmp_path / "r.json"
    rig = gc.Rig(nvml=_fake_gpus(trace), environ={}, work=FakeWork(trace))
    code, text = _main([*FAST, "--only", "steady-power,baseline-settle", "--budget-seconds", "25", "--json", str(out)],
                       rig)  # fmt: skip
    data = json.loads(out.read_text())
    verdicts = {c["name"]: (c["verdict"], c["detail"]) for c in data["checks"]}
    assert verdicts["baseline-settle"] == ("skip", "left out to fit --budget-seconds 25")
    assert verdicts["steady-power"][0] == "pass" and code == gc.EXIT_OK, text


BARE = """
import builtins, sys, time
real = builtins.__import__
def bare(name, *args, **kwargs):
    if name.split(".")[0] in {"rich", "pydantic", "hydra", "omegaconf", "pandas", "pyarrow", "scipy", "matplotlib"}:
        raise ImportError(f"No module named {name!r}")
    return real(name, *args, **kwargs)
builtins.__import__ = bare
sys.path.insert(0, sys.argv[1])
import importlib.util
spec = importlib.util.spec_from_file_location("gpu_check", sys.argv[2])
gc = importlib.util.module_from_spec(spec); sys.modules["gpu_check"] = gc; spec.loader.exec_module(gc)
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml
gpu = FakeGpu(energy_mj=lambda t: int(250_000 * t), energy_update_period_s=0.01, instant_power_mw=lambda t: 250_000)
class Work:  # CUDA work that can run, so the experiment check reaches its own dependencies
    def problem(self): return None
rig = gc.Rig(nvml=FakeNvml([gpu], clock=time.monotonic), environ={}, work=Work())
sys.exit(gc.main(["--only", "update-period,repeatability", "--period-timeout-s", "0.5"], rig=rig))
"""


def test_runs_with_only_the_bare_gpu_machine_packages() -> None:
    proc = subprocess.run([sys.executable, "-c", BARE, str(REPO), str(SCRIPT)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == gc.EXIT_OK, proc.stdout + proc.stderr
    assert "update-period" in proc.stdout and "pass" in proc.stdout.lower()
    assert "llem's experiments need its dependencies" in proc.stdout  # the experiment check skips, saying why


class FakeSession:
    def __init__(self, on_acquire: Any = None) -> None:
        self.on_acquire = on_acquire
        self.acquired: list[Any] = []
        self.released = 0

    def acquire(self, experiment: Any) -> tuple[Any, Any, bool]:
        self.acquired.append(experiment)
        if self.on_acquire:
            self.on_acquire()
        return SimpleNamespace(), SimpleNamespace(), False

    def release(self) -> None:
        self.released += 1


def _dist(mean: float | None, p50: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(mean=mean, p50=mean if p50 is None else p50)


def _result(per_token: float, devices: tuple[str, ...] = ("gpu0",), ttft: float = 900.0, e2e: float = 1000.0) -> Any:
    tokens = 1024
    gpu = SimpleNamespace(devices=list(devices))
    return SimpleNamespace(
        passes=1, duration_s=10.0, output_tokens=tokens,
        energy=SimpleNamespace(total_j=per_token * tokens, per_output_token_j=per_token / 2, components={"gpu": gpu}),
        latency=SimpleNamespace(
            ttft_ms=_dist(ttft), e2e_ms=_dist(e2e), queue_ms=_dist(ttft - 5), prefill_ms=_dist(5.0)
        ),
    )  # fmt: skip


class FakeExperiments:
    """Hands out canned results in order and records what it was asked to run."""

    def __init__(self, results: list[Any], vllm: bool = True, on_acquire: Any = None) -> None:
        self.results = list(results)
        self.vllm = vllm
        self.on_acquire = on_acquire
        self.ran: list[Any] = []
        self.sessions: list[FakeSession] = []

    def problem(self, backend: str) -> str | None:
        return None if backend != "vllm" or self.vllm else "vLLM is not installed (pip install -e '.[vllm]')"

    def session(self) -> FakeSession:
        self.sessions.append(FakeSession(self.on_acquire))
        return self.sessions[-1]

    def run(self, experiment: Any, output_dir: Path, session: Any) -> Any:
        self.ran.append(experiment)
        return self.results.pop(0)


def _rig(experiments: FakeExperiments, gpus: int = 1) -> Any:
    trace = PowerTrace(60.0)
    return gc.Rig(nvml=_fake_gpus(trace, gpus), environ={}, work=FakeWork(trace), experiments=experiments)


def test_repeatability_runs_cycles_in_one_warm_session(tmp_path: Path) -> None:
    experiments = FakeExperiments([_result(v) for v in (1.0, 1.01, 0.99, 1.0, 1.005)])
    out = tmp_path / "r.json"
    code, _ = _main(["--only", "repeatability", "--json", str(out)], _rig(experiments))
    assert code == gc.EXIT_OK
    assert len(experiments.ran) == 5 and len(experiments.sessions) == 1 and experiments.sessions[0].released == 1
    first = experiments.ran[0]
    assert first.backend.name == "pytorch" and first.backend.device == "cuda" and first.model.name == "builtin:tiny"
    assert first.energy.source == "nvml" and not first.energy.include_host and first.energy.devices is None
    (check,) = json.loads(out.read_text())["checks"]
    assert [r["per_token_j"] for r in check["rows"]] == pytest.approx([1.0, 1.01, 0.99, 1.0, 1.005])
    noisy = FakeExperiments([_result(v) for v in (1.0, 1.1, 0.9, 1.0, 1.0)])
    assert _main(["--only", "repeatability"], _rig(noisy))[0] == gc.EXIT_FAILED


def test_convergence_grows_the_window_with_the_prompts() -> None:
    experiments = FakeExperiments([_result(v) for v in (1.08, 1.01, 1.0)])
    code, text = _main(["--only", "convergence", "--model", "/models/x"], _rig(experiments))
    assert code == gc.EXIT_OK, text
    assert [e.num_input_prompts for e in experiments.ran] == [16, 64, 256]
    assert all(e.measure.min_window_seconds == 0.0 and e.model.name == "/models/x" for e in experiments.ran)


def test_device_scope_needs_two_gpus_and_compares_pinned() -> None:
    code, text = _main(["--only", "device-scope"], _rig(FakeExperiments([])))
    assert code == gc.EXIT_OK and "SKIP" in text and "at least two GPUs" in text
    experiments = FakeExperiments([_result(1.0), _result(1.005)])
    assert _main(["--only", "device-scope"], _rig(experiments, gpus=2))[0] == gc.EXIT_OK
    assert [e.energy.devices for e in experiments.ran] == [None, [0]]
    whole_node = FakeExperiments([_result(1.9, ("gpu0", "gpu1")), _result(1.0)])
    code, text = _main(["--only", "device-scope"], _rig(whole_node, gpus=2))
    assert code == gc.EXIT_FAILED and "other GPUs" in text


def test_cross_engine_ttft() -> None:
    code, text = _main(["--only", "cross-engine-ttft"], _rig(FakeExperiments([], vllm=False)))
    assert code == gc.EXIT_OK and "vLLM is not installed" in text
    experiments = FakeExperiments([_result(1.0, ttft=900.0), _result(1.0, ttft=880.0)])
    assert _main(["--only", "cross-engine-ttft"], _rig(experiments))[0] == gc.EXIT_OK
    pytorch, vllm = experiments.ran
    assert pytorch.backend.batch_size == 1 and vllm.backend.name == "vllm" and vllm.backend.max_num_seqs == 1
    assert pytorch.num_input_prompts == vllm.num_input_prompts and vllm.energy.source == "none"
    old_clock = FakeExperiments([_result(1.0, ttft=20.0), _result(1.0, ttft=880.0)])
    assert _main(["--only", "cross-engine-ttft"], _rig(old_clock))[0] == gc.EXIT_FAILED


def test_baseline_states_in_order(tmp_path: Path) -> None:
    trace = PowerTrace(60.0)
    work = FakeWork(trace)
    rig = gc.Rig(nvml=_fake_gpus(trace), environ={}, work=work, experiments=FakeExperiments([]))
    out = tmp_path / "r.json"
    code, text = _main([*FAST, "--only", "baseline-states", "--json", str(out)], rig)
    assert code == gc.EXIT_OK, text
    (check,) = json.loads(out.read_text())["checks"]
    watts = {r["state"]: r["gpu0_w"] for r in check["rows"]}
    assert list(watts) == list(gc.BASELINE_STATES)
    assert watts["no_context"] == pytest.approx(60.0, rel=0.02)
    assert watts["context_alloc"] == pytest.approx(70.0, rel=0.02)
    added = re.search(r"context \+ allocation adds ([0-9.]+) %", check["detail"])
    assert added and float(added.group(1)) == pytest.approx(100 * 10 / 60, abs=0.5)  # 70 W against 60 W
    assert rig.experiments.sessions[0].released == 1


def test_baseline_right_after_load_still_hot_fails() -> None:
    trace = PowerTrace(60.0)
    work = FakeWork(trace)

    def hot_then_cool() -> None:  # the load leaves the board warm for a while
        trace.set(90.0)
        threading.Timer(0.25, lambda: trace.set(work.idle_level())).start()

    experiments = FakeExperiments([], on_acquire=hot_then_cool)
    rig = gc.Rig(nvml=_fake_gpus(trace), environ={}, work=work, experiments=experiments)
    code, text = _main([*FAST, "--only", "baseline-states"], rig)
    assert code == gc.EXIT_FAILED and "settle_seconds" in text


def test_a_check_that_raises_is_an_error_and_the_others_still_run(tmp_path: Path) -> None:
    trace = PowerTrace(60.0)

    class Broken(FakeExperiments):
        def run(self, experiment: Any, output_dir: Path, session: Any) -> Any:
            raise RuntimeError("engine crashed")

    rig = gc.Rig(nvml=_fake_gpus(trace), environ={}, work=FakeWork(trace), experiments=Broken([]))
    out = tmp_path / "r.json"
    code, _ = _main(["--only", "repeatability,convergence", "--json", str(out)], rig)
    assert code == gc.EXIT_FAILED
    checks = json.loads(out.read_text())["checks"]
    assert [c["verdict"] for c in checks] == ["error", "error"]
    assert "engine crashed" in checks[0]["detail"] and "RuntimeError" in checks[0]["traceback"]


def test_observer_timing_alternates() -> None:
    state = {"observing": False}
    started: list[bool] = []

    def generate() -> float:
        return 1.05 if state["observing"] else 1.0

    def observe() -> Any:
        state["observing"] = True
        started.append(True)
        return lambda: state.update(observing=False)

    run = gc.Run(100.0, FakeClock())
    on, off = gc.time_with_and_without(generate, observe, 4, run)
    assert on == [1.05] * 4 and off == [1.0] * 4 and len(started) == 4
    assert [r["sampling"] for r in run.rows] == gc.abba(4)
    assert gc.observer_outcome(on, off).verdict == gc.FAIL  # 5 % slower


# ---------------------------------------------------------------------- this machine


def test_without_cuda_torch_the_load_checks_are_skipped_with_the_reason() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        pytest.skip("CUDA works here")
    trace = PowerTrace(60.0)
    code, text = _main([*FAST, "--only", "steady-power,square-wave"], gc.Rig(nvml=_fake_gpus(trace), environ={}))
    assert code == gc.EXIT_OK
    assert text.count("SKIP") == 2 and "has no usable CUDA" in text


def test_this_machine_without_gpu_exits_3_with_the_reason() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - GPU machines only
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--windows", "0.1"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == gc.EXIT_NO_GPU == 3
    assert "no usable NVIDIA GPU here" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_errors_exit_2() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "nope"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "unknown check nope" in proc.stderr


class _FakeTorch:
    """Just enough of torch for TorchLoad: a matmul that takes 0.2 ms of wall time."""

    bfloat16 = "bfloat16"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.cuda = SimpleNamespace(synchronize=lambda *a: None)

    def device(self, name: str) -> str:
        return name

    def randn(self, *shape: int, device: str, dtype: str) -> object:
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        return object()

    def matmul(self, a: object, b: object) -> None:
        time.sleep(0.0002)


@pytest.mark.parametrize(("period", "duty"), [(None, 1.0), (0.02, 0.5), (0.05, 0.5)])
def test_torch_load_keeps_its_duty(monkeypatch: pytest.MonkeyPatch, period: float | None, duty: float) -> None:
    monkeypatch.setitem(sys.modules, "torch", _FakeTorch())
    load = gc.TorchLoad([0, 1], 64, period, duty)
    load.start()
    time.sleep(0.4)
    assert load.stop()["achieved_duty"] == pytest.approx(duty, abs=0.1)


def test_torch_load_that_cannot_start_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", _FakeTorch(fail=True))
    with pytest.raises(RuntimeError, match="cuda:0: CUDA out of memory"):
        gc.TorchLoad([0], 64).start()
