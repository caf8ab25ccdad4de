"""Counter, polling, cross-checked and null meters against scripted traces with hand-computed joules."""

from __future__ import annotations

import time

import pytest

from tests.fakes import fake_pynvml as fk
from tests.fakes.fake_pynvml import FakeClock, FakeGpu, FakeNvml

from llem.energy.devices.nvml import NvmlDevices
from llem.energy.meters import (
    CrossCheckedMeter,
    NvmlCounterMeter,
    NvmlPollingMeter,
    trapezoid_j,
)


def _devices(*gpus: FakeGpu, clock: FakeClock | None = None) -> tuple[NvmlDevices, FakeClock]:
    clock = clock or FakeClock()
    return NvmlDevices.open(None, nvml=FakeNvml(list(gpus), clock=clock), environ={}), clock


# --------------------------------------------------------------------- counter
def test_counter_two_devices_hand_computed() -> None:
    devs, clock = _devices(
        FakeGpu(energy_mj=[1_000_000, 1_250_500]),
        FakeGpu(energy_mj=[5_000, 305_000]),
    )
    meter = NvmlCounterMeter(devs, clock=clock)
    meter.begin_window("run")
    clock.advance(2.5)
    w = meter.end_window("run")
    assert w.name == "run"
    assert w.source == "nvml"
    assert w.duration_s == pytest.approx(2.5)
    assert w.per_device == {"gpu0": pytest.approx(250.5), "gpu1": pytest.approx(300.0)}
    assert w.total_j == pytest.approx(550.5)
    assert w.samples == 2
    assert w.unavailable_reason is None
    assert w.resolution_s == pytest.approx(0.1)


def test_counter_nested_windows_follow_the_clock() -> None:
    # gpu0 at a steady 300 W: counter(t) = 300_000 mJ/s * t
    devs, clock = _devices(FakeGpu(energy_mj=lambda t: 7_000 + 300_000 * t))
    meter = NvmlCounterMeter(devs, clock=clock)
    meter.begin_window("outer")
    clock.advance(1.0)
    meter.begin_window("inner")
    assert sorted(meter.open_windows) == ["inner", "outer"]
    clock.advance(0.5)
    inner = meter.end_window("inner")
    clock.advance(1.0)
    outer = meter.end_window("outer")
    assert inner.total_j == pytest.approx(150.0)
    assert outer.total_j == pytest.approx(750.0)
    assert outer.duration_s == pytest.approx(2.5)


def test_window_names_are_checked() -> None:
    devs, clock = _devices(FakeGpu())
    meter = NvmlCounterMeter(devs, clock=clock)
    meter.begin_window("a")
    with pytest.raises(ValueError):
        meter.begin_window("a")
    with pytest.raises(KeyError):
        meter.end_window("b")
    meter.end_window("a")
    with pytest.raises(KeyError):
        meter.end_window("a")


def test_counter_lost_gpu_gives_none_with_reason() -> None:
    devs, clock = _devices(
        FakeGpu(energy_mj=lambda t: 1000 * t),
        FakeGpu(energy_mj=[0, 1000], errors={"nvmlDeviceGetTotalEnergyConsumption": [None, fk.NVMLError_GpuIsLost]}),
    )
    meter = NvmlCounterMeter(devs, clock=clock)
    meter.begin_window("run")
    clock.advance(1.0)
    w = meter.end_window("run")
    assert w.per_device["gpu0"] == pytest.approx(1.0)
    assert w.per_device["gpu1"] is None
    assert w.total_j is None
    assert w.unavailable_reason is not None and "gpu1" in w.unavailable_reason and "lost" in w.unavailable_reason


def test_counter_going_backwards_is_not_energy() -> None:
    devs, clock = _devices(FakeGpu(energy_mj=[50_000, 10]))
    meter = NvmlCounterMeter(devs, clock=clock)
    meter.begin_window("run")
    w = meter.end_window("run")
    assert w.total_j is None and "backwards" in (w.unavailable_reason or "")


def test_counter_meter_closes_owned_devices_only() -> None:
    nv = FakeNvml([FakeGpu()])
    devs = NvmlDevices.open(None, nvml=nv, environ={})
    NvmlCounterMeter(devs).close()
    assert nv.shutdown_calls == 0
    NvmlCounterMeter(devs, owns_devices=True).close()
    assert nv.shutdown_calls == 1


# --------------------------------------------------------------------- polling
def test_trapezoid_helper() -> None:
    assert trapezoid_j([(0.0, 100.0), (1.0, 200.0), (2.0, 300.0), (2.5, 100.0)]) == pytest.approx(500.0)
    assert trapezoid_j([(0.0, 5.0)]) == 0.0


def test_polling_trapezoid_hand_computed() -> None:
    # gpu0 trace: 100 W @0 s (begin), 200 W @1 s, 300 W @2 s, 100 W @2.5 s (end)
    #   = 1*(100+200)/2 + 1*(200+300)/2 + 0.5*(300+100)/2 = 150 + 250 + 100 = 500 J
    # gpu1 holds 50 W: 2.5 s * 50 W = 125 J
    devs, clock = _devices(
        FakeGpu(power_mw=[100_000, 200_000, 300_000, 100_000]),
        FakeGpu(power_mw=50_000),
    )
    meter = NvmlPollingMeter(devs, interval_s=1.0, clock=clock, start_thread=False)
    meter.begin_window("run")
    clock.advance(1.0)
    assert meter.poll_once()
    clock.advance(1.0)
    assert meter.poll_once()
    clock.advance(0.5)
    w = meter.end_window("run")
    assert w.source == "nvml_polling"
    assert w.per_device == {"gpu0": pytest.approx(500.0), "gpu1": pytest.approx(125.0)}
    assert w.total_j == pytest.approx(625.0)
    assert w.samples == 4
    assert w.duration_s == pytest.approx(2.5)
    assert w.resolution_s == pytest.approx(1.0)
    meter.close()


def test_polling_stores_nothing_between_windows() -> None:
    devs, clock = _devices(FakeGpu(power_mw=lambda t: 100_000 + 100_000 * t))
    meter = NvmlPollingMeter(devs, interval_s=0.5, clock=clock, start_thread=False)
    assert meter.poll_once() is False
    meter.begin_window("outer")
    clock.advance(1.0)
    meter.poll_once()  # 200 W
    meter.begin_window("inner")  # 200 W
    clock.advance(1.0)
    meter.poll_once()  # 300 W
    inner = meter.end_window("inner")  # 300 W at t=2
    clock.advance(1.0)
    outer = meter.end_window("outer")  # 400 W at t=3
    # power rises linearly, so the trapezoid is exact: mean power * duration
    assert inner.total_j == pytest.approx(250.0)  # t 1..2: mean 250 W
    assert outer.total_j == pytest.approx(750.0)  # t 0..3: mean 250 W * 3 s
    assert meter._samples == []  # pruned once no window is open
    assert meter.poll_once() is False


def test_polling_skips_a_failed_interior_reading_but_not_an_edge() -> None:
    errors = {"nvmlDeviceGetPowerUsage": [None, fk.NVMLError_Unknown, None]}
    # scripted values advance only on successful reads: 100 W at begin, 300 W at end
    devs, clock = _devices(FakeGpu(power_mw=[100_000, 300_000], errors=errors))
    meter = NvmlPollingMeter(devs, interval_s=1.0, clock=clock, start_thread=False)
    meter.begin_window("run")
    clock.advance(1.0)
    meter.poll_once()
    clock.advance(1.0)
    w = meter.end_window("run")
    assert w.samples == 3
    assert w.total_j == pytest.approx(400.0)  # 2 s * (100 + 300) / 2 W

    errors = {"nvmlDeviceGetPowerUsage": [None, fk.NVMLError_NotSupported]}
    devs, clock = _devices(FakeGpu(errors=errors))
    meter = NvmlPollingMeter(devs, interval_s=1.0, clock=clock, start_thread=False)
    meter.begin_window("run")
    clock.advance(1.0)
    w = meter.end_window("run")
    assert w.total_j is None
    assert "window edge" in (w.unavailable_reason or "")


def test_polling_thread_integrates_constant_power() -> None:
    devs, _ = _devices(FakeGpu(power_mw=100_000))
    meter = NvmlPollingMeter(devs, interval_s=0.01)
    try:
        meter.begin_window("run")
        time.sleep(0.1)
        w = meter.end_window("run")
    finally:
        meter.close()
    assert w.samples >= 4
    assert w.total_j == pytest.approx(100.0 * w.duration_s)


# --------------------------------------------------------------------- cross-check and null
def test_cross_checked_meter_reports_both_figures() -> None:
    clock = FakeClock()
    devs, _ = _devices(
        FakeGpu(energy_mj=lambda t: 300_000 * t, power_mw=270_000),
        FakeGpu(energy_mj=lambda t: 100_000 * t, power_mw=100_000),
        clock=clock,
    )
    meter = CrossCheckedMeter(
        NvmlCounterMeter(devs, clock=clock),
        NvmlPollingMeter(devs, interval_s=0.5, clock=clock, start_thread=False),
    )
    assert meter.source == "nvml" and meter.nvml_devices is devs
    meter.begin_window("run")
    for _ in range(4):
        clock.advance(0.5)
        meter.polling.poll_once()
    w = meter.end_window("run")
    assert w.total_j == pytest.approx(800.0)  # (300 + 100) W * 2 s
    assert w.polled_total_j == pytest.approx(740.0)  # (270 + 100) W * 2 s
    assert w.polled_per_device == {"gpu0": pytest.approx(540.0), "gpu1": pytest.approx(200.0)}
    assert w.samples == 6
    meter.close()


# --------------------------------------------------------------------- instant power and update periods
def test_polling_integrates_instant_power_where_supported() -> None:
    # the averaged reading lags: 100 W throughout, while the instant reading shows the step to 300 W
    # (the first instant value is read by the probe that finds the field supported)
    devs, clock = _devices(
        FakeGpu(power_mw=100_000, instant_power_mw=[100_000, 100_000, 300_000, 300_000]),
        FakeGpu(power_mw=50_000),  # no instant field on this board
    )
    meter = NvmlPollingMeter(devs, interval_s=1.0, clock=clock, start_thread=False)
    assert meter.power_sources == {"gpu0": "instant", "gpu1": "average"}
    assert meter.polled_source == "mixed"
    meter.begin_window("run")
    clock.advance(1.0)
    meter.poll_once()
    clock.advance(1.0)
    w = meter.end_window("run")
    assert w.per_device == {"gpu0": pytest.approx(200.0 + 300.0), "gpu1": pytest.approx(100.0)}
    assert w.polled_source == "mixed"
    meter.close()


def test_cross_checked_window_records_the_polled_source() -> None:
    clock = FakeClock()
    devs, _ = _devices(FakeGpu(energy_mj=lambda t: 300_000 * t, instant_power_mw=300_000), clock=clock)
    meter = CrossCheckedMeter(
        NvmlCounterMeter(devs, clock=clock), NvmlPollingMeter(devs, interval_s=0.5, clock=clock, start_thread=False)
    )
    assert meter.polled_source == "instant"
    meter.begin_window("run")
    clock.advance(1.0)
    w = meter.end_window("run")
    assert w.polled_source == "instant" and w.polled_total_j == pytest.approx(300.0)


def test_counter_resolution_is_the_slowest_measured_period() -> None:
    devs, clock = _devices(FakeGpu(), FakeGpu(), FakeGpu())
    assert NvmlCounterMeter(devs, update_periods_s={0: 0.02, 1: 0.05, 2: 0.03}).resolution_s == pytest.approx(0.05)
    assert NvmlCounterMeter(devs, update_periods_s={0: 0.02, 1: None}).resolution_s == pytest.approx(0.1)
    assert NvmlCounterMeter(devs).resolution_s == pytest.approx(0.1)
    m = NvmlCounterMeter(devs, clock=clock, update_periods_s={0: 0.02, 1: 0.02, 2: 0.02})
    m.begin_window("run")
    assert m.end_window("run").resolution_s == pytest.approx(0.02)
