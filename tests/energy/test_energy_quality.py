"""Every quality warning and failure, and silence for a clean window."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.fake_pynvml import FakeClock, FakeGpu, FakeNvml

from tests.energy.fake_powercap import server_tree, set_energy
from tests.fakes import fake_pynvml as fk

from llem.energy.monitor import ComponentEnergy, MonitorWindow, open_monitor, with_unmeasured_component
from llem.energy.quality import (
    MIN_UPDATE_PERIODS,
    counter_polled_diff_pct,
    quality_failures,
    quality_status,
    quality_warnings,
)


def _w(
    duration: float = 30.0,
    total: float | None = 1000.0,
    res: float | None = 0.1,
    polled: float | None = None,
    polled_source: str | None = "instant",
) -> MonitorWindow:
    gpu = ComponentEnergy(source="nvml", joules=total, devices=["gpu0"], per_device={"gpu0": total},
                          polled_j=polled, polled_source=polled_source, duration_s=duration)
    return MonitorWindow(name="run", duration_s=duration, components={"gpu": gpu}, excluded={}, total_j=total,
                         unavailable_reason=None, resolution_s=res)


def _q(w: MonitorWindow, **kw: object) -> list[str]:
    args: dict = {"update_periods_s": {"gpu0": 0.1}, "tolerance_pct": 10.0, "samples": 300, "throttled": False,
                  "persistence_mode": {"gpu0": True}}
    args.update(kw)
    return quality_warnings(w, **args)


def test_clean_window_has_no_warnings() -> None:
    assert _q(_w(polled=1050.0)) == []


def test_short_window_names_the_measured_update_period() -> None:
    assert MIN_UPDATE_PERIODS == 100
    (msg,) = _q(_w(duration=5.0), update_periods_s={"gpu0": 0.02, "gpu1": 0.1})
    assert "5.000 s" in msg and "100 update periods" in msg
    assert "measured at 100.0 ms on gpu1" in msg and "10.0 s" in msg  # the slowest GPU sets the bar
    assert _q(_w(duration=10.0), update_periods_s={"gpu0": 0.1}) == []  # exactly 100 periods is enough
    assert _q(_w(duration=5.0), update_periods_s={"gpu0": 0.02}) == []  # a 20 ms board needs only 2 s
    (msg,) = _q(_w(duration=1.5), update_periods_s={"gpu0": 0.02})
    assert "measured at 20.0 ms on gpu0" in msg


def test_short_window_without_a_measured_period_uses_the_resolution() -> None:
    (msg,) = _q(_w(duration=5.0, res=0.1), update_periods_s={"gpu0": None})
    assert "not measured" in msg and "100.0 ms" in msg
    (msg,) = _q(_w(duration=0.05, res=0.001), update_periods_s=None)  # a RAPL-only window
    assert "1.0 ms" in msg
    assert _q(_w(duration=0.2, res=0.001), update_periods_s=None) == []
    assert _q(_w(duration=0.01, res=None), update_periods_s=None) == []  # nothing measured: no resolution


def test_short_window_from_a_monitor_that_measured_the_period(tmp_path: Path) -> None:
    clock = FakeClock(1.0)
    gpu = FakeGpu(energy_mj=lambda t: int(200_000 * t), energy_update_period_s=0.05, power_mw=200_000)
    nv = FakeNvml([gpu], clock=clock, call_latency_s=0.001)
    monitor = open_monitor("auto", [0], nvml_module=nv, rapl_root=tmp_path, environ={}, clock=clock,
                           start_threads=False)
    monitor.begin_window("run")
    clock.advance(3.0)
    w = monitor.end_window("run")
    monitor.close()
    (msg,) = quality_warnings(w, update_periods_s=monitor.update_periods_s)
    assert "measured at 50.0 ms on gpu0" in msg and "5.0 s needed" in msg
    assert monitor.update_periods_s["gpu0"] == pytest.approx(0.05, abs=0.002)


def test_too_few_samples() -> None:
    (msg,) = _q(_w(), samples=4)
    assert "only 4 telemetry samples" in msg and "10" in msg
    assert _q(_w(), samples=3, min_samples=3) == []
    assert _q(_w(), samples=None) == []


def test_counter_vs_polled_disagreement_names_the_polled_source() -> None:
    (msg,) = _q(_w(total=1000.0, polled=850.0))
    assert "1000.0 J" in msg and "850.0 J" in msg and "15.0%" in msg and "10%" in msg
    assert "instant power" in msg
    (msg,) = _q(_w(total=1000.0, polled=800.0, polled_source="average"))
    assert "20.0%" in msg and "nvmlDeviceGetPowerUsage" in msg and "lags" in msg
    assert _q(_w(total=1000.0, polled=850.0), tolerance_pct=20.0) == []
    assert _q(_w(total=None, polled=850.0)) == []
    assert counter_polled_diff_pct(0.0, 5.0) is None


def test_thermal_throttling() -> None:
    (msg,) = _q(_w(), throttled=True)
    assert "thermal throttling" in msg


def test_persistence_mode_off() -> None:
    msgs = _q(_w(), persistence_mode={"gpu0": True, "gpu1": False, "gpu2": None})
    assert len(msgs) == 1 and "gpu1" in msgs[0] and "nvidia-smi -pm 1" in msgs[0]


def test_all_at_once() -> None:
    msgs = _q(_w(duration=0.2, polled=500.0), samples=2, throttled=True, persistence_mode={"gpu0": False})
    assert len(msgs) == 5


def test_window_without_gpu_has_no_cross_check() -> None:
    cpu = ComponentEnergy(source="rapl", joules=50.0, devices=["package-0"], per_device={"package-0": 50.0})
    w = MonitorWindow(name="run", duration_s=30.0, components={"cpu": cpu}, excluded={"gpu": "job uses no GPU"},
                      total_j=50.0, unavailable_reason=None, resolution_s=0.001)
    assert quality_warnings(w) == []


# --------------------------------------------------------------------- failures
def test_measured_window_and_cpu_only_window_do_not_fail() -> None:
    assert quality_failures(_w()) == []
    cpu = ComponentEnergy(source="rapl", joules=None, devices=[], per_device={},
                          unavailable_reason="RAPL not available")
    window = MonitorWindow(name="run", duration_s=1.0, components={"cpu": cpu}, excluded={"gpu": "job uses no GPU"},
                           total_j=None, unavailable_reason="cpu: RAPL not available", resolution_s=None)
    assert quality_failures(window) == []
    assert quality_status([], []) == "ok" and quality_status([], ["w"]) == "warn"


def test_gpu_job_whose_nvml_is_unusable_fails_while_the_host_reads(tmp_path: Path) -> None:
    # CUDA runs the job, NVML cannot be loaded (a container without the driver's utility libraries), RAPL reads
    zones = server_tree(tmp_path)
    clock = FakeClock()
    nv = FakeNvml([], init_error=fk.NVMLError_LibraryNotFound)
    monitor = open_monitor("auto", [0], nvml_module=nv, rapl_root=tmp_path, environ={}, clock=clock,
                           start_threads=False, measure_update_period=False)
    assert monitor.measured == ["cpu", "dram"] and monitor.scope["measured"] == ["cpu", "dram"]
    monitor.begin_window("run")
    clock.advance(1.0)
    set_energy(zones["package-0"], 1_000 + 5_000_000)
    window = monitor.end_window("run")
    monitor.close()
    assert window.components["cpu"].joules is not None and window.total_j is None
    failures = quality_failures(window)
    assert len(failures) == 1 and "gpu0" in failures[0] and "NVML library not found" in failures[0]
    assert quality_status(failures, []) == "fail"


def test_one_unreadable_gpu_of_two_fails_naming_it() -> None:
    gpu = ComponentEnergy(source="nvml", joules=None, devices=["gpu0", "gpu1"], per_device={"gpu0": 5.0, "gpu1": None},
                          unavailable_reason="GPU is lost")
    window = MonitorWindow(name="run", duration_s=1.0, components={"gpu": gpu}, excluded={}, total_j=None,
                           unavailable_reason="gpu: GPU is lost", resolution_s=None)
    [failure] = quality_failures(window)
    assert "on gpu1 (GPU is lost)" in failure


def test_a_gpu_found_in_use_after_the_window_voids_the_host_total() -> None:
    cpu = ComponentEnergy(source="rapl", joules=12.0, devices=["package-0"], per_device={"package-0": 12.0})
    window = MonitorWindow(name="run", duration_s=1.0, components={"cpu": cpu}, excluded={"gpu": "job uses no GPU"},
                           total_j=12.0, unavailable_reason=None, resolution_s=None)
    assert quality_failures(window) == []
    voided = with_unmeasured_component(window, "gpu", ["gpu0"], "the engine ran on CUDA device(s) 0")
    assert voided.total_j is None and voided.unavailable_reason == "gpu: the engine ran on CUDA device(s) 0"
    assert voided.excluded == {} and voided.components["cpu"].joules == 12.0
    assert voided.components["gpu"].per_device == {"gpu0": None}
    assert quality_failures(voided) and window.total_j == 12.0  # the original is left as it was
