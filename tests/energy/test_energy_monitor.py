"""open_monitor: the job's own GPUs, CPU packages and DRAM in one window; scope, sources and reasons."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.energy.fake_powercap import server_tree, set_energy
from tests.fakes import fake_pynvml as fk
from tests.fakes.fake_pynvml import FakeClock, FakeGpu, FakeNvml

from llem.energy.devices import DeviceUnavailable
from llem.energy.monitor import EnergyMonitor, open_monitor

NO_COUNTER = {"nvmlDeviceGetTotalEnergyConsumption": fk.NVMLError_NotSupported}
NO_POWER = {"nvmlDeviceGetPowerUsage": fk.NVMLError_NotSupported}
READS = {"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetFieldValues"}


def _four_gpus(clock: FakeClock, **kw: object) -> FakeNvml:
    """GPU k draws (100 + 10k) W, so a reading tells which GPU it came from."""
    gpus = [
        FakeGpu(energy_mj=lambda t, w=100 + 10 * k: int(w * 1000 * t), power_mw=(100 + 10 * k) * 1000, **kw)  # type: ignore[arg-type]
        for k in range(4)
    ]
    return FakeNvml(gpus, clock=clock)


def _open(source: str, gpus: list[int] | None, nv: FakeNvml | None, rapl: Path, clock: FakeClock, **kw: object
          ) -> EnergyMonitor:
    args: dict = {"nvml_module": nv, "rapl_root": rapl, "environ": {}, "clock": clock, "start_threads": False,
                  "measure_update_period": False}
    args.update(kw)
    return open_monitor(source, gpus, **args)


def _bump_host(zones: dict[str, Path], package_j: tuple[float, float], dram_j: tuple[float, float]) -> None:
    start = {"package-0": 1_000, "package-1": 2_000, "dram-0": 3_000, "dram-1": 4_000}
    for key, joules in zip(("package-0", "package-1", "dram-0", "dram-1"), (*package_j, *dram_j)):
        set_energy(zones[key], start[key] + int(joules * 1e6))


# --------------------------------------------------------------------- scope
def test_one_gpu_job_on_a_four_gpu_node_reads_only_its_gpu(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = _four_gpus(clock)
    monitor = _open("auto", [1], nv, tmp_path / "missing", clock)
    assert monitor.scope["included"] == ["gpu"]
    assert monitor.scope["devices"] == {"gpu": ["gpu1"]}
    assert monitor.scope["cuda_indices"] == [1]
    assert set(monitor.scope["excluded"]) == {"cpu", "dram"}
    assert "does not exist" in monitor.scope["excluded"]["cpu"]
    assert monitor.nvml_devices is not None and monitor.nvml_devices.indices == [1]
    monitor.begin_window("run")
    clock.advance(2.0)
    w = monitor.end_window("run")
    monitor.close()
    gpu = w.components["gpu"]
    assert gpu.per_device == {"gpu1": pytest.approx(220.0)}  # 110 W x 2 s: GPU 1's draw
    assert gpu.joules == pytest.approx(220.0) and gpu.polled_j == pytest.approx(220.0)
    assert w.total_j == pytest.approx(220.0) and w.unavailable_reason is None
    assert set(w.excluded) == {"cpu", "dram"}
    others = {(fn, idx) for fn, idx in nv.calls if fn in READS and idx != 1}
    assert others == set()
    assert nv.initialised == 0


def test_cuda_visible_devices_maps_the_jobs_index(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = _four_gpus(clock)
    monitor = _open("auto", [1], nv, tmp_path / "missing", clock, environ={"CUDA_VISIBLE_DEVICES": "2,3"})
    monitor.begin_window("run")
    clock.advance(1.0)
    w = monitor.end_window("run")
    monitor.close()
    assert w.components["gpu"].per_device == {"gpu1": pytest.approx(130.0)}  # CUDA 1 is NVML 3: 130 W
    assert monitor.scope["gpu_uuids"] == {"gpu1": nv.gpus[3].uuid}


def test_cpu_job_with_a_visible_gpu_reads_no_gpu(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = _four_gpus(clock)
    zones = server_tree(tmp_path)
    monitor = _open("auto", None, nv, tmp_path, clock)
    assert nv.init_calls == 0 and nv.calls == []
    assert monitor.nvml_devices is None
    assert monitor.source == "rapl"
    assert monitor.scope["included"] == ["cpu", "dram"]
    assert monitor.scope["excluded"] == {"gpu": "job uses no GPU"}
    assert monitor.scope["devices"] == {"cpu": ["package-0", "package-1"], "dram": ["dram-0", "dram-1"]}
    assert "cuda_indices" not in monitor.scope
    monitor.begin_window("run")
    clock.advance(3.0)
    _bump_host(zones, (60.0, 45.0), (9.0, 6.0))
    w = monitor.end_window("run")
    monitor.close()
    assert w.components["cpu"].joules == pytest.approx(105.0)
    assert w.components["dram"].joules == pytest.approx(15.0)  # a separate component, not inside the package
    assert w.components["dram"].per_device == {"dram-0": pytest.approx(9.0), "dram-1": pytest.approx(6.0)}
    assert w.total_j == pytest.approx(120.0)
    assert "gpu" not in w.components and w.excluded == {"gpu": "job uses no GPU"}
    assert monitor.update_periods_s == {} and monitor.polled_source is None
    assert monitor.resolution_s == pytest.approx(0.001)
    empty = _open("auto", [], nv, tmp_path, clock)  # [] is a CPU job too
    assert empty.scope["excluded"] == {"gpu": "job uses no GPU"} and nv.init_calls == 0
    empty.close()


def test_gpu_job_measures_host_beside_the_gpus(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = _four_gpus(clock)
    zones = server_tree(tmp_path)
    monitor = _open("auto", [0, 2], nv, tmp_path, clock)
    assert monitor.source == "nvml+rapl"
    assert monitor.scope["included"] == ["gpu", "cpu", "dram"]
    assert monitor.scope["sources"] == {"gpu": "nvml", "cpu": "rapl", "dram": "rapl"}
    monitor.begin_window("run")
    clock.advance(2.0)
    _bump_host(zones, (80.0, 70.0), (10.0, 8.0))
    w = monitor.end_window("run")
    monitor.close()
    assert w.components["gpu"].joules == pytest.approx(200.0 + 240.0)
    assert w.components["cpu"].joules == pytest.approx(150.0)
    assert w.components["dram"].joules == pytest.approx(18.0)
    assert w.total_j == pytest.approx(440.0 + 150.0 + 18.0)
    assert w.duration_s == pytest.approx(2.0)
    key = monitor.baseline_key
    assert nv.gpus[0].uuid in key and nv.gpus[2].uuid in key and nv.gpus[1].uuid not in key
    assert "package-0" in key and "dram-1" in key


def test_include_host_false_leaves_host_out_with_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    server_tree(tmp_path)
    monitor = _open("auto", [0], _four_gpus(clock), tmp_path, clock, include_host=False)
    assert monitor.scope["included"] == ["gpu"]
    assert monitor.scope["excluded"] == {"cpu": "energy.include_host is false", "dram": "energy.include_host is false"}
    assert monitor.source == "nvml"
    monitor.close()


def test_missing_dram_domain_is_excluded_with_reason(tmp_path: Path) -> None:
    from tests.energy.fake_powercap import make_zone

    clock = FakeClock()
    make_zone(tmp_path, "intel-rapl:0", "package-0", 10)
    monitor = _open("auto", None, None, tmp_path, clock)
    assert monitor.scope["included"] == ["cpu"]
    assert "no 'dram' sub-zone" in monitor.scope["excluded"]["dram"]
    monitor.close()


# --------------------------------------------------------------------- update period and polled source
def test_update_period_measured_per_gpu_and_recorded(tmp_path: Path) -> None:
    clock = FakeClock(10.0)
    gpus = [
        FakeGpu(energy_mj=lambda t: int(300_000 * t), energy_update_period_s=0.1),
        FakeGpu(energy_mj=lambda t: int(300_000 * t), energy_update_period_s=0.05),
    ]
    nv = FakeNvml(gpus, clock=clock, call_latency_s=0.001)
    monitor = _open("auto", [0, 1], nv, tmp_path / "missing", clock, measure_update_period=True)
    assert monitor.update_periods_s == {"gpu0": pytest.approx(0.1, abs=0.002), "gpu1": pytest.approx(0.05, abs=0.002)}
    assert monitor.resolution_s == pytest.approx(0.1, abs=0.002)  # the slowest
    assert monitor.describe()["update_periods_s"] == monitor.update_periods_s
    monitor.close()
    # measured once per GPU per process: a second monitor reads no counter in a loop
    before = len(nv.calls)
    again = _open("auto", [0, 1], nv, tmp_path / "missing", clock, measure_update_period=True)
    assert len(nv.calls) - before < 30
    assert again.update_periods_s == monitor.update_periods_s
    again.close()


def test_update_period_not_measured_falls_back_to_the_known_bound(tmp_path: Path) -> None:
    clock = FakeClock()
    monitor = _open("auto", [0], _four_gpus(clock), tmp_path / "missing", clock)
    assert monitor.update_periods_s == {"gpu0": None}
    assert monitor.resolution_s == pytest.approx(0.1)
    monitor.close()


@pytest.mark.parametrize(("instant", "expected_source", "polled_w"), [(350_000, "instant", 350.0), (None, "average", 250.0)])
def test_polled_cross_check_uses_instant_power_where_supported(
    tmp_path: Path, instant: int | None, expected_source: str, polled_w: float
) -> None:
    clock = FakeClock()
    gpu = FakeGpu(energy_mj=lambda t: int(340_000 * t), power_mw=250_000, instant_power_mw=instant)
    nv = FakeNvml([gpu], clock=clock)
    monitor = _open("auto", [0], nv, tmp_path / "missing", clock)
    assert monitor.polled_source == expected_source
    monitor.begin_window("run")
    clock.advance(4.0)
    w = monitor.end_window("run")
    monitor.close()
    gpu_e = w.components["gpu"]
    assert gpu_e.joules == pytest.approx(1360.0)
    assert gpu_e.polled_j == pytest.approx(polled_w * 4.0)
    assert gpu_e.polled_source == expected_source
    read = "nvmlDeviceGetFieldValues" if instant else "nvmlDeviceGetPowerUsage"
    assert (read, 0) in nv.calls


def test_auto_without_counter_integrates_power(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = FakeNvml([FakeGpu(power_mw=200_000, errors=NO_COUNTER)], clock=clock)
    monitor = _open("auto", [0], nv, tmp_path / "missing", clock, interval_s=0.05)
    assert monitor.source == "nvml_polling"
    assert monitor.update_periods_s == {}
    assert monitor.resolution_s == pytest.approx(0.05)
    monitor.begin_window("run")
    clock.advance(1.5)
    w = monitor.end_window("run")
    monitor.close()
    assert w.components["gpu"].joules == pytest.approx(300.0)
    assert w.components["gpu"].polled_j is None  # no second figure to cross-check against
    assert w.components["gpu"].polled_source == "average"


def test_auto_counter_without_power_has_no_cross_check(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = FakeNvml([FakeGpu(energy_mj=lambda t: int(1000 * t), errors=NO_POWER)], clock=clock)
    monitor = _open("auto", [0], nv, tmp_path / "missing", clock)
    assert monitor.source == "nvml" and monitor.polled_source is None
    monitor.begin_window("run")
    clock.advance(1.0)
    w = monitor.end_window("run")
    monitor.close()
    assert w.components["gpu"].joules == pytest.approx(1.0) and w.components["gpu"].polled_j is None


# --------------------------------------------------------------------- what cannot be measured
def test_gpu_job_without_nvml_keeps_gpu_in_scope_and_total_null(tmp_path: Path) -> None:
    clock = FakeClock()
    zones = server_tree(tmp_path)
    nv = FakeNvml([], init_error=fk.NVMLError_LibraryNotFound)
    monitor = _open("auto", [0], nv, tmp_path, clock)
    assert monitor.scope["included"] == ["gpu", "cpu", "dram"]
    assert "NVML library not found" in monitor.scope["unavailable"]["gpu"]
    assert monitor.source == "rapl" and monitor.nvml_devices is None
    monitor.begin_window("run")
    clock.advance(1.0)
    _bump_host(zones, (10.0, 10.0), (1.0, 1.0))
    w = monitor.end_window("run")
    monitor.close()
    assert w.components["gpu"].joules is None and w.components["gpu"].per_device == {"gpu0": None}
    assert w.components["cpu"].joules == pytest.approx(20.0)
    assert w.total_j is None  # never the host alone standing in for the job
    assert w.unavailable_reason and w.unavailable_reason.startswith("gpu: NVML library not found")


def test_nothing_measurable_gives_nulls_with_reasons(tmp_path: Path) -> None:
    clock = FakeClock()
    monitor = _open("auto", None, None, tmp_path / "missing", clock)
    assert monitor.source == "none" and monitor.resolution_s is None
    assert monitor.scope["included"] == ["cpu"] and "does not exist" in monitor.scope["unavailable"]["cpu"]
    assert monitor.measured == [] and monitor.scope["measured"] == []  # in scope, but nothing was read
    monitor.begin_window("run")
    clock.advance(2.0)
    w = monitor.end_window("run")
    monitor.close()
    assert w.total_j is None and w.components["cpu"].joules is None
    assert "cpu: RAPL not available" in (w.unavailable_reason or "")
    assert w.duration_s == pytest.approx(2.0)

    none = _open("none", [0], _four_gpus(clock), tmp_path, clock)
    assert none.scope["included"] == [] and none.source == "none" and none.baseline_key == "none"
    none.begin_window("run")
    w = none.end_window("run")
    none.close()
    assert w.components == {} and w.total_j is None
    assert "energy.source = none" in (w.unavailable_reason or "")


def test_gpu_lost_mid_window_nulls_the_total_only(tmp_path: Path) -> None:
    clock = FakeClock()
    zones = server_tree(tmp_path)
    lost = [None, None, fk.NVMLError_GpuIsLost]  # the check at open, the window begin, then lost
    gpu = FakeGpu(energy_mj=lambda t: int(100_000 * t), errors={"nvmlDeviceGetTotalEnergyConsumption": lost})
    monitor = _open("auto", [0], FakeNvml([gpu], clock=clock), tmp_path, clock)
    monitor.begin_window("run")
    clock.advance(1.0)
    _bump_host(zones, (5.0, 5.0), (1.0, 1.0))
    w = monitor.end_window("run")
    monitor.close()
    assert w.components["gpu"].joules is None and "lost" in (w.components["gpu"].unavailable_reason or "")
    assert w.components["cpu"].joules == pytest.approx(10.0)
    assert w.total_j is None and "gpu" in (w.unavailable_reason or "")


# --------------------------------------------------------------------- explicit sources
def test_explicit_sources_are_required(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = FakeNvml([FakeGpu(), FakeGpu(errors=NO_COUNTER)], clock=clock)
    with pytest.raises(DeviceUnavailable) as info:
        _open("nvml", [0, 1], nv, tmp_path, clock)
    assert "gpu1" in info.value.reason and "nvml_polling" in info.value.reason
    assert nv.initialised == 0
    with pytest.raises(DeviceUnavailable, match="uses no GPU"):
        _open("nvml", None, nv, tmp_path, clock)
    with pytest.raises(DeviceUnavailable, match="uses no GPU"):
        _open("nvml_polling", [], nv, tmp_path, clock)
    no_power = FakeNvml([FakeGpu(errors=NO_POWER)], clock=clock)
    with pytest.raises(DeviceUnavailable, match="power reading unavailable"):
        _open("nvml_polling", [0], no_power, tmp_path, clock)
    assert no_power.initialised == 0
    missing = FakeNvml([], init_error=fk.NVMLError_LibraryNotFound)
    with pytest.raises(DeviceUnavailable, match="NVML library not found"):
        _open("nvml", [0], missing, tmp_path, clock)
    with pytest.raises(DeviceUnavailable, match="RAPL"):
        _open("rapl", None, None, tmp_path / "missing", clock)
    with pytest.raises(ValueError):
        _open("bogus", None, None, tmp_path, clock)


def test_explicit_nvml_polling_skips_the_counter_and_host_is_best_effort(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = FakeNvml([FakeGpu(power_mw=100_000)], clock=clock)
    monitor = _open("nvml_polling", [0], nv, tmp_path / "missing", clock, measure_update_period=True)
    assert monitor.source == "nvml_polling" and monitor.update_periods_s == {}
    assert set(monitor.scope["excluded"]) == {"cpu", "dram"}
    assert ("nvmlDeviceGetTotalEnergyConsumption", 0) not in nv.calls
    monitor.close()


def test_explicit_rapl_on_a_gpu_job_measures_host_only(tmp_path: Path) -> None:
    clock = FakeClock()
    server_tree(tmp_path)
    nv = _four_gpus(clock)
    monitor = _open("rapl", [0], nv, tmp_path, clock, include_host=False)
    assert monitor.scope["included"] == ["cpu", "dram"]
    assert "rapl" in monitor.scope["excluded"]["gpu"]
    assert nv.init_calls == 0
    monitor.close()


# --------------------------------------------------------------------- windows and lifecycle
def test_windows_nest_and_names_are_checked(tmp_path: Path) -> None:
    clock = FakeClock()
    monitor = _open("auto", [0], _four_gpus(clock), tmp_path / "missing", clock)
    monitor.begin_window("outer")
    clock.advance(1.0)
    monitor.begin_window("inner")
    with pytest.raises(ValueError):
        monitor.begin_window("inner")
    clock.advance(0.5)
    inner = monitor.end_window("inner")
    clock.advance(1.0)
    outer = monitor.end_window("outer")
    with pytest.raises(KeyError):
        monitor.end_window("outer")
    assert inner.total_j == pytest.approx(50.0) and outer.total_j == pytest.approx(250.0)
    assert monitor.open_windows == []
    monitor.close()
    monitor.close()
    with pytest.raises(RuntimeError):
        monitor.begin_window("late")


def test_device_state_per_gpu(tmp_path: Path) -> None:
    clock = FakeClock()
    gpus = [FakeGpu(memory_used=5, temperature_c=31, sm_clock_mhz=210, pstate=8), FakeGpu(pstate=0)]
    monitor = _open("auto", [0], FakeNvml(gpus, clock=clock), tmp_path / "missing", clock)
    assert monitor.device_state() == {
        "gpu0": {"memory_used_bytes": 5, "temperature_c": 31, "sm_clock_mhz": 210, "pstate": 8}
    }
    monitor.close()
    assert monitor.device_state() == {}
    host = _open("auto", None, None, tmp_path / "missing", clock)
    assert host.device_state() == {}
    host.close()


def test_threads_run_and_stop_on_real_time(tmp_path: Path) -> None:
    server_tree(tmp_path)
    nv = FakeNvml([FakeGpu(energy_mj=lambda t: int(100_000 * t), power_mw=100_000)], clock=time.monotonic)
    monitor = open_monitor("auto", [0], nvml_module=nv, rapl_root=tmp_path, environ={}, interval_s=0.01)
    try:
        monitor.begin_window("run")
        time.sleep(0.1)
        w = monitor.end_window("run")
    finally:
        monitor.close()
    gpu = w.components["gpu"]
    assert gpu.joules == pytest.approx(100.0 * gpu.duration_s, rel=0.05, abs=0.5)
    assert gpu.polled_j == pytest.approx(100.0 * gpu.duration_s, rel=0.01)
    assert w.components["cpu"].joules == 0.0  # the fake host did no work: a measured zero
    assert monitor.update_periods_s["gpu0"] is not None
    assert nv.initialised == 0


def test_mig_job_keeps_gpu_in_scope_with_the_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    monitor = _open("auto", [0], _four_gpus(clock), tmp_path / "missing", clock,
                    environ={"CUDA_VISIBLE_DEVICES": "MIG-1234"})
    assert "MIG" in monitor.scope["unavailable"]["gpu"]
    monitor.begin_window("run")
    w = monitor.end_window("run")
    monitor.close()
    assert w.total_j is None and "MIG" in (w.unavailable_reason or "")


def test_job_gpu_found_by_uuid_beside_gpus_nvml_refuses(tmp_path: Path) -> None:
    """A SLURM node with ConstrainDevices: NVML counts four GPUs, opens only the job's two."""
    clock = FakeClock()
    refused = {"nvmlDeviceGetHandleByIndex": fk.NVMLError_NoPermission}
    gpus = [FakeGpu(uuid=f"GPU-cccc{k}", energy_mj=lambda t, w=100 + 10 * k: int(w * 1000 * t),
                    errors=refused if k in (0, 1) else {}) for k in range(4)]
    nv = FakeNvml(gpus, clock=clock)
    monitor = _open("auto", [0], nv, tmp_path / "missing", clock, environ={"CUDA_VISIBLE_DEVICES": "GPU-cccc3"})
    assert monitor.scope["gpu_uuids"] == {"gpu0": "GPU-cccc3"} and monitor.scope["measured"] == ["gpu"]
    assert monitor.scope["nvml_refused"] == {"nvml0": "insufficient permissions", "nvml1": "insufficient permissions"}
    monitor.begin_window("run")
    clock.advance(2.0)
    w = monitor.end_window("run")
    monitor.close()
    assert w.total_j == pytest.approx(2.0 * 130)  # GPU 3's draw, nobody else's
