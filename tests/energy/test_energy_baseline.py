"""Idle baseline: measured over the monitor's scope, keyed to its device set, and the subtraction by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.energy.fake_powercap import server_tree, set_energy
from tests.fakes.fake_pynvml import FakeClock, FakeGpu, FakeNvml

from llem.energy.baseline import (
    BaselineResult,
    adjust_window,
    adjusted_energy_j,
    energy_per_token_j,
    measure_baseline,
)
from llem.energy.monitor import ComponentEnergy, MonitorWindow, open_monitor


def _gpus(clock: FakeClock) -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(energy_mj=lambda t: int(60_000 * t), temperature_c=lambda t: 70 if t < 5.0 else 35, pstate=8),
            FakeGpu(energy_mj=lambda t: int(40_000 * t)),
        ],
        clock=clock,
    )


def _monitor(nv: FakeNvml | None, gpus: list[int] | None, rapl: Path, clock: FakeClock):  # type: ignore[no-untyped-def]
    return open_monitor("auto", gpus, nvml_module=nv, rapl_root=rapl, environ={}, clock=clock,
                        start_threads=False, measure_update_period=False)


def test_measure_baseline_settles_then_measures_every_component(tmp_path: Path) -> None:
    clock = FakeClock()
    zones = server_tree(tmp_path)
    monitor = _monitor(_gpus(clock), [0, 1], tmp_path, clock)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.sleep(s)
        if len(slept) == 2:  # the measured idle period: 20 W per package, 3 W per DRAM domain
            set_energy(zones["package-0"], 1_000 + 200_000_000)
            set_energy(zones["package-1"], 2_000 + 200_000_000)
            set_energy(zones["dram-0"], 3_000 + 30_000_000)
            set_energy(zones["dram-1"], 4_000 + 30_000_000)

    b = measure_baseline(monitor, 10.0, settle_s=5.0, sleep=sleep)
    monitor.close()
    assert slept == [5.0, 10.0]  # settle first, then the measured period
    assert b.settle_s == 5.0 and b.duration_s == pytest.approx(10.0)
    assert b.key == monitor.baseline_key and b.source == "nvml+rapl"
    assert b.component_w == {"gpu": pytest.approx(100.0), "cpu": pytest.approx(40.0), "dram": pytest.approx(6.0)}
    assert b.per_device_w["gpu0"] == pytest.approx(60.0) and b.per_device_w["dram-1"] == pytest.approx(3.0)
    assert b.total_w == pytest.approx(146.0)
    assert b.unavailable_reason is None
    assert b.device_state["gpu0"]["temperature_c"] == 35  # read after settling, not before
    assert b.device_state["gpu0"]["pstate"] == 8 and set(b.device_state) == {"gpu0", "gpu1"}
    assert monitor.open_windows == []
    with pytest.raises(ValueError):
        measure_baseline(monitor, 0.0)
    with pytest.raises(ValueError):
        measure_baseline(monitor, 1.0, settle_s=-1.0)


def test_no_settle_means_no_wait(tmp_path: Path) -> None:
    clock = FakeClock()
    monitor = _monitor(_gpus(clock), [0], tmp_path / "missing", clock)
    slept: list[float] = []
    measure_baseline(monitor, 2.0, sleep=lambda s: (slept.append(s), clock.sleep(s)))
    monitor.close()
    assert slept == [2.0]


def test_baseline_without_energy_source(tmp_path: Path) -> None:
    clock = FakeClock()
    monitor = _monitor(None, None, tmp_path / "missing", clock)
    b = measure_baseline(monitor, 5.0, sleep=clock.sleep)
    monitor.close()
    assert b.total_w is None and b.component_w == {"cpu": None}
    assert "RAPL not available" in (b.unavailable_reason or "")


# --------------------------------------------------------------------- key
def test_baseline_from_another_device_set_adjusts_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = _gpus(clock)
    one = _monitor(nv, [0], tmp_path / "missing", clock)
    baseline = measure_baseline(one, 10.0, sleep=clock.sleep)
    one.close()
    two = _monitor(nv, [0, 1], tmp_path / "missing", clock)
    assert two.baseline_key != one.baseline_key
    two.begin_window("run")
    clock.advance(4.0)
    w = two.end_window("run")
    two.close()
    adj = adjust_window(w, baseline, two.baseline_key)
    assert adj.total_j is None
    assert adj.components_j == {"gpu": None}
    assert adj.per_device_j == {"gpu0": None, "gpu1": None}  # not even GPU 0, which the baseline covers
    assert "re-measured" in (adj.unavailable_reason or "") and baseline.key in (adj.unavailable_reason or "")
    # the same device set again: the baseline applies
    again = _monitor(nv, [0], tmp_path / "missing", clock)
    again.begin_window("run")
    clock.advance(4.0)
    w = again.end_window("run")
    again.close()
    ok = adjust_window(w, baseline, again.baseline_key)
    assert ok.total_j == pytest.approx(0.0)  # idle over idle: a measured zero
    assert ok.unavailable_reason is None


def test_counter_and_polling_sources_do_not_share_a_baseline(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = _gpus(clock)
    counter = _monitor(nv, [0], tmp_path / "missing", clock)
    polling = open_monitor("nvml_polling", [0], nvml_module=nv, rapl_root=tmp_path / "missing", environ={},
                           clock=clock, start_threads=False)
    assert counter.baseline_key != polling.baseline_key
    counter.close()
    polling.close()


# --------------------------------------------------------------------- arithmetic
def test_adjusted_energy_arithmetic() -> None:
    assert adjusted_energy_j(500.0, 60.0, 5.0) == pytest.approx(200.0)  # 500 - 60*5
    assert adjusted_energy_j(100.0, 60.0, 5.0) is None  # below idle: null, never 0
    assert adjusted_energy_j(300.0, 60.0, 5.0) == 0.0  # exactly idle: a real zero
    assert adjusted_energy_j(0.3, 0.1, 3.0) == 0.0  # 0.1 * 3 is 0.30000000000000004: rounding, not below idle
    assert adjusted_energy_j(299.999, 60.0, 5.0) is None  # 1 mJ below idle is below idle
    assert adjusted_energy_j(None, 60.0, 5.0) is None
    assert adjusted_energy_j(500.0, None, 5.0) is None  # never silently the raw figure


def test_energy_per_token() -> None:
    assert energy_per_token_j(200.0, 100) == pytest.approx(2.0)
    assert energy_per_token_j(200.0, 0) is None
    assert energy_per_token_j(None, 100) is None
    assert energy_per_token_j(200.0, None) is None


KEY = "gpu=nvml[GPU-a,GPU-b];cpu=rapl[package-0]"


def _comp(joules: float | None, per: dict[str, float | None], d: float = 4.0, source: str = "nvml") -> ComponentEnergy:
    return ComponentEnergy(source=source, joules=joules, devices=list(per), per_device=per, duration_s=d,
                           unavailable_reason=None if joules is not None else "gpu1: GPU is lost")


def _window(gpu: ComponentEnergy, cpu: ComponentEnergy) -> MonitorWindow:
    total = None if gpu.joules is None or cpu.joules is None else gpu.joules + cpu.joules
    return MonitorWindow(name="run", duration_s=4.0, components={"gpu": gpu, "cpu": cpu}, excluded={},
                         total_j=total, unavailable_reason=None, resolution_s=0.1)


def _baseline(**kw: object) -> BaselineResult:
    args: dict = {
        "key": KEY, "source": "nvml+rapl", "duration_s": 10.0, "settle_s": 0.0, "total_w": 130.0,
        "component_w": {"gpu": 100.0, "cpu": 30.0},
        "per_device_w": {"gpu0": 60.0, "gpu1": 40.0, "package-0": 30.0},
    }
    args.update(kw)
    return BaselineResult(**args)


def test_adjust_window_per_component_device_and_total() -> None:
    # 4 s window: idle is 240 J on gpu0, 160 J on gpu1, 120 J on package-0
    w = _window(_comp(600.0, {"gpu0": 400.0, "gpu1": 200.0}), _comp(200.0, {"package-0": 200.0}, source="rapl"))
    adj = adjust_window(w, _baseline(), KEY)
    assert adj.components_j == {"gpu": pytest.approx(200.0), "cpu": pytest.approx(80.0)}
    assert adj.per_device_j == {"gpu0": pytest.approx(160.0), "gpu1": pytest.approx(40.0), "package-0": pytest.approx(80.0)}
    assert adj.total_j == pytest.approx(280.0)
    assert adj.clamped == [] and adj.warnings == [] and adj.unavailable_reason is None


def test_each_component_uses_its_own_duration() -> None:
    w = _window(_comp(600.0, {"gpu0": 400.0, "gpu1": 200.0}, d=4.0), _comp(200.0, {"package-0": 200.0}, d=5.0))
    adj = adjust_window(w, _baseline(), KEY)
    assert adj.components_j["cpu"] == pytest.approx(50.0)  # 200 - 30 W x 5 s


def test_below_idle_is_null_with_a_warning_never_zero() -> None:
    # gpu1 read 100 J against an idle 160 J; the GPU component as a whole is still above idle
    w = _window(_comp(500.0, {"gpu0": 400.0, "gpu1": 100.0}), _comp(200.0, {"package-0": 200.0}))
    adj = adjust_window(w, _baseline(), KEY)
    assert adj.per_device_j["gpu1"] is None and adj.per_device_j["gpu0"] == pytest.approx(160.0)
    assert adj.components_j["gpu"] == pytest.approx(100.0)
    assert adj.total_j == pytest.approx(180.0)
    assert adj.clamped == ["gpu1"]
    (msg,) = adj.warnings
    assert "gpu1" in msg and "100.00 J" in msg and "160.00 J" in msg and "null" in msg

    # the CPU component below idle: it is null, so the total is too
    low = adjust_window(_window(_comp(600.0, {"gpu0": 400.0, "gpu1": 200.0}), _comp(90.0, {"package-0": 90.0})),
                        _baseline(), KEY)
    assert low.components_j["cpu"] is None and low.total_j is None
    assert low.clamped == ["cpu", "package-0"] and len(low.warnings) == 2
    assert "cpu: below the idle baseline" in (low.unavailable_reason or "")
    assert 0.0 not in low.components_j.values() and 0.0 not in low.per_device_j.values()


def test_missing_pieces_never_give_a_partial_total() -> None:
    w = _window(_comp(None, {"gpu0": 400.0, "gpu1": None}), _comp(200.0, {"package-0": 200.0}))
    adj = adjust_window(w, _baseline(), KEY)
    assert adj.total_j is None and adj.components_j["gpu"] is None
    assert adj.components_j["cpu"] == pytest.approx(80.0) and adj.per_device_j["gpu0"] == pytest.approx(160.0)
    assert "gpu: gpu1: GPU is lost" in (adj.unavailable_reason or "")

    no_cpu = _baseline(component_w={"gpu": 100.0, "cpu": None}, unavailable_reason="cpu: read failed")
    full = _window(_comp(600.0, {"gpu0": 400.0, "gpu1": 200.0}), _comp(200.0, {"package-0": 200.0}))
    adj = adjust_window(full, no_cpu, KEY)
    assert adj.total_j is None and "cpu: no idle baseline (cpu: read failed)" in (adj.unavailable_reason or "")

    none = adjust_window(full, None, KEY)
    assert none.total_j is None and none.per_device_j == {"gpu0": None, "gpu1": None, "package-0": None}
    assert none.unavailable_reason == "no idle baseline measured"
