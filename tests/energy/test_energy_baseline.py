"""Idle baseline measurement and the subtraction / per-token arithmetic, by hand."""

from __future__ import annotations

import pytest

from tests.fakes.fake_pynvml import FakeClock, FakeGpu, FakeNvml

from llem.energy.baseline import (
    BaselineResult,
    adjust_window,
    adjusted_energy_j,
    energy_per_token_j,
    measure_baseline,
)
from llem.energy.devices.nvml import NvmlDevices
from llem.energy.meters import EnergyWindow, NullMeter, NvmlCounterMeter


def test_measure_baseline_with_injected_sleep() -> None:
    clock = FakeClock()
    nv = FakeNvml([FakeGpu(energy_mj=lambda t: 60_000 * t), FakeGpu(energy_mj=lambda t: 40_000 * t)], clock=clock)
    meter = NvmlCounterMeter(NvmlDevices.open(None, nvml=nv, environ={}), clock=clock)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.sleep(s)

    b = measure_baseline(meter, 10.0, sleep=sleep)
    assert slept == [10.0]
    assert b.source == "nvml"
    assert b.duration_s == pytest.approx(10.0)
    assert b.per_device_w == {"gpu0": pytest.approx(60.0), "gpu1": pytest.approx(40.0)}
    assert b.total_w == pytest.approx(100.0)
    assert b.unavailable_reason is None
    assert meter.open_windows == []
    with pytest.raises(ValueError):
        measure_baseline(meter, 0.0)


def test_baseline_without_energy_source() -> None:
    clock = FakeClock()
    b = measure_baseline(NullMeter("nothing here", clock=clock), 5.0, sleep=clock.sleep)
    assert b.total_w is None
    assert b.unavailable_reason == "nothing here"


def test_adjusted_energy_arithmetic() -> None:
    assert adjusted_energy_j(500.0, 60.0, 5.0) == pytest.approx(200.0)  # 500 - 60*5
    assert adjusted_energy_j(100.0, 60.0, 5.0) == 0.0  # below idle: clamped
    assert adjusted_energy_j(300.0, 60.0, 5.0) == 0.0  # exactly idle
    assert adjusted_energy_j(None, 60.0, 5.0) is None
    assert adjusted_energy_j(500.0, None, 5.0) is None  # never silently the raw figure


def test_energy_per_token() -> None:
    assert energy_per_token_j(200.0, 100) == pytest.approx(2.0)
    assert energy_per_token_j(200.0, 0) is None
    assert energy_per_token_j(None, 100) is None
    assert energy_per_token_j(200.0, None) is None


def _window(total: float | None, per: dict[str, float | None], d: float = 4.0) -> EnergyWindow:
    return EnergyWindow(source="nvml", duration_s=d, total_j=total, per_device=per, samples=2)


def test_adjust_window_per_device_and_total() -> None:
    base = BaselineResult("nvml", 10.0, 100.0, {"gpu0": 60.0, "gpu1": 40.0})
    # 4 s window: idle is 240 J on gpu0, 160 J on gpu1, 400 J in total
    adj = adjust_window(_window(500.0, {"gpu0": 400.0, "gpu1": 100.0}), base)
    assert adj.per_device_j == {"gpu0": pytest.approx(160.0), "gpu1": 0.0}
    assert adj.total_j == pytest.approx(100.0)  # from the totals, not the clamped device sum
    assert adj.clamped == ["gpu1"]
    assert adj.unavailable_reason is None

    low = adjust_window(_window(300.0, {"gpu0": 200.0, "gpu1": 100.0}), base)
    assert low.total_j == 0.0 and low.clamped == ["gpu0", "gpu1", "total"]


def test_adjust_window_missing_pieces() -> None:
    base = BaselineResult("nvml", 10.0, 100.0, {"gpu0": 60.0, "gpu1": 40.0})
    adj = adjust_window(_window(None, {"gpu0": 400.0, "gpu1": None}), base)
    assert adj.total_j is None and adj.per_device_j["gpu1"] is None
    assert adj.per_device_j["gpu0"] == pytest.approx(160.0)
    assert adjust_window(_window(500.0, {"gpu0": 500.0}), None).total_j is None
    other = BaselineResult("rapl", 10.0, 30.0, {"package-0": 30.0})
    mismatch = adjust_window(_window(500.0, {"gpu0": 500.0}), other)
    assert mismatch.total_j is None and "rapl" in (mismatch.unavailable_reason or "")
