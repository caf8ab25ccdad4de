"""NvmlDevices against the scripted fake: opening, index mapping, readings and error translation."""

from __future__ import annotations

import pytest

from tests.fakes.fake_pynvml import FakeClock, FakeGpu, FakeNvml
from tests.fakes import fake_pynvml as fk

from llem.energy.devices import DeviceLost, DeviceReadError, DeviceUnavailable, ReadNoPermission, ReadNotSupported
from llem.energy.devices.nvml import NvmlDevices, visible_gpu_count


def _open(nv: FakeNvml, indices: list[int] | None = None, env: dict[str, str] | None = None) -> NvmlDevices:
    return NvmlDevices.open(indices, nvml=nv, environ=env or {})


def test_open_all_and_close_once() -> None:
    nv = FakeNvml([FakeGpu(), FakeGpu()])
    devs = _open(nv)
    assert devs.indices == [0, 1]
    assert devs.labels() == ["gpu0", "gpu1"]
    assert nv.initialised == 1
    devs.close()
    devs.close()
    assert nv.shutdown_calls == 1
    with pytest.raises(RuntimeError):
        devs.energy_mj(0)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (fk.NVMLError_LibraryNotFound, "NVML library not found (no NVIDIA driver)"),
        (fk.NVMLError_DriverNotLoaded, "NVIDIA driver not loaded"),
        (fk.NVMLError_NoPermission, "no permission to initialise NVML"),
        (fk.NVMLError_Unknown, "NVML initialisation failed: Unknown Error"),
    ],
)
def test_init_errors_become_device_unavailable(error: type, reason: str) -> None:
    nv = FakeNvml([FakeGpu()], init_error=error)
    with pytest.raises(DeviceUnavailable) as info:
        _open(nv)
    assert info.value.reason == reason


def test_error_hierarchy_mimics_pynvml() -> None:
    err = fk.NVMLError(fk.NVML_ERROR_NOT_SUPPORTED)
    assert isinstance(err, fk.NVMLError_NotSupported)
    assert isinstance(fk.NVMLError_GpuIsLost(), fk.NVMLError)
    assert fk.NVMLError_GpuIsLost().value == fk.NVML_ERROR_GPU_IS_LOST


def test_no_gpu_visible_shuts_nvml_down() -> None:
    nv = FakeNvml([])
    with pytest.raises(DeviceUnavailable, match="no NVIDIA GPU visible"):
        _open(nv)
    assert nv.initialised == 0


def test_index_out_of_range() -> None:
    nv = FakeNvml([FakeGpu()])
    with pytest.raises(DeviceUnavailable, match="GPU index 3 requested but only 1"):
        _open(nv, [3])
    assert nv.initialised == 0


def test_subset_and_order_of_indices() -> None:
    devs = _open(FakeNvml([FakeGpu(), FakeGpu(), FakeGpu()]), [2, 0])
    assert devs.indices == [2, 0]
    assert devs.nvml_index(2) == 2


def _three() -> FakeNvml:
    return FakeNvml([FakeGpu(uuid=f"GPU-aaaa{n}-1111") for n in range(3)])


def test_cuda_visible_devices_by_uuid_prefix() -> None:
    devs = _open(_three(), None, {"CUDA_VISIBLE_DEVICES": "GPU-aaaa2,aaaa0"})
    assert devs.indices == [0, 1]
    assert devs.nvml_index(0) == 2 and devs.nvml_index(1) == 0
    assert devs.uuid(0) == "GPU-aaaa2-1111"


def test_cuda_visible_devices_integers_stop_at_invalid() -> None:
    devs = _open(_three(), None, {"CUDA_VISIBLE_DEVICES": "1,7,0"})
    assert [devs.nvml_index(i) for i in devs.indices] == [1]


@pytest.mark.parametrize("value", ["", "-1", "GPU-nomatch"])
def test_cuda_visible_devices_hiding_everything(value: str) -> None:
    nv = _three()
    with pytest.raises(DeviceUnavailable, match="no NVIDIA GPU visible"):
        _open(nv, None, {"CUDA_VISIBLE_DEVICES": value})
    assert nv.initialised == 0


def test_cuda_visible_devices_mig_is_refused() -> None:
    with pytest.raises(DeviceUnavailable, match="MIG"):
        _open(_three(), None, {"CUDA_VISIBLE_DEVICES": "MIG-1234"})


def test_energy_and_power_readings() -> None:
    devs = _open(FakeNvml([FakeGpu(energy_mj=[5, 9], power_mw=123_456)]))
    assert devs.energy_mj(0) == 5
    assert devs.energy_mj(0) == 9
    assert devs.power_mw(0) == 123_456
    assert devs.supports_energy_counter(0)


@pytest.mark.parametrize(
    ("error", "wrapped"),
    [
        (fk.NVMLError_NotSupported, ReadNotSupported),
        (fk.NVMLError_FunctionNotFound, ReadNotSupported),
        (fk.NVMLError_NoPermission, ReadNoPermission),
        (fk.NVMLError_GpuIsLost, DeviceLost),
        (fk.NVMLError_Unknown, DeviceReadError),
    ],
)
def test_energy_errors_are_wrapped(error: type, wrapped: type) -> None:
    devs = _open(FakeNvml([FakeGpu(errors={"nvmlDeviceGetTotalEnergyConsumption": error})]))
    with pytest.raises(wrapped) as info:
        devs.energy_mj(0)
    assert info.value.device == "gpu0"
    assert "energy counter" in str(info.value)


def test_supports_energy_counter() -> None:
    no_counter = {"nvmlDeviceGetTotalEnergyConsumption": fk.NVMLError_NotSupported}
    devs = _open(FakeNvml([FakeGpu(), FakeGpu(errors=no_counter)]))
    assert devs.supports_energy_counter(0) is True
    assert devs.supports_energy_counter(1) is False
    lost = _open(FakeNvml([FakeGpu(errors={"nvmlDeviceGetTotalEnergyConsumption": fk.NVMLError_GpuIsLost})]))
    with pytest.raises(DeviceLost):
        lost.supports_energy_counter(0)


def test_telemetry_readings() -> None:
    gpu = FakeGpu(
        temperature_c=71, sm_clock_mhz=1755, mem_clock_mhz=2619, util_gpu=97, util_mem=40,
        memory_total=1000, memory_used=250, persistence=fk.NVML_FEATURE_DISABLED,
    )
    devs = _open(FakeNvml([gpu]))
    assert devs.temperature_c(0) == 71
    clocks = devs.clocks_mhz(0)
    assert (clocks.sm_mhz, clocks.mem_mhz) == (1755, 2619)
    util = devs.utilization_pct(0)
    assert (util.gpu_pct, util.memory_pct) == (97, 40)
    mem = devs.memory_bytes(0)
    assert mem is not None and (mem.total, mem.used, mem.free) == (1000, 250, 750)
    assert devs.persistence_mode(0) is False
    assert devs.persistence_modes() == {"gpu0": False}


def test_unsupported_telemetry_is_none_not_zero() -> None:
    errors = {
        name: fk.NVMLError_NotSupported
        for name in (
            "nvmlDeviceGetTemperature", "nvmlDeviceGetClockInfo", "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPersistenceMode", "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons", "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetPowerManagementLimit",
        )
    }
    devs = _open(FakeNvml([FakeGpu(errors=errors)]))
    assert devs.temperature_c(0) is None
    assert devs.clocks_mhz(0).sm_mhz is None and devs.clocks_mhz(0).mem_mhz is None
    assert devs.utilization_pct(0).gpu_pct is None
    assert devs.memory_bytes(0) is None
    assert devs.persistence_mode(0) is None
    assert devs.throttle_reasons(0) is None
    assert devs.power_limit_w(0) is None


def test_lost_gpu_raises_even_for_telemetry() -> None:
    devs = _open(FakeNvml([FakeGpu(errors={"nvmlDeviceGetTemperature": fk.NVMLError_GpuIsLost})]))
    with pytest.raises(DeviceLost):
        devs.temperature_c(0)


@pytest.mark.parametrize(
    ("bits", "thermal", "power"),
    [
        (0x00, False, False),
        (0x40, True, False),
        (0x20, True, False),
        (0x04, False, True),
        (0x84, False, True),
        (0x01, False, False),
    ],
)
def test_throttle_reasons(bits: int, thermal: bool, power: bool) -> None:
    devs = _open(FakeNvml([FakeGpu(clock_reasons=bits)]))
    reasons = devs.throttle_reasons(0)
    assert reasons is not None
    assert (reasons.raw, reasons.thermal, reasons.power) == (bits, thermal, power)


def test_throttle_reasons_falls_back_to_old_call() -> None:
    nv = FakeNvml([FakeGpu(clock_reasons=0x40)], has_event_reasons=False)
    devs = _open(nv)
    reasons = devs.throttle_reasons(0)
    assert reasons is not None and reasons.thermal
    assert ("nvmlDeviceGetCurrentClocksThrottleReasons", 0) in nv.calls


def test_describe() -> None:
    devs = _open(FakeNvml([FakeGpu(name="NVIDIA A100-SXM4-40GB", memory_total=40 * 2**30, power_limit_mw=400_000)]))
    info = devs.describe(0)
    assert info["name"] == "NVIDIA A100-SXM4-40GB"
    assert info["uuid"].startswith("GPU-")
    assert info["driver_version"] == "550.54.15"
    assert info["cuda_driver_version"] == "12.4"
    assert info["memory_total_bytes"] == 40 * 2**30
    assert info["power_limit_w"] == 400.0
    assert info["energy_counter"] is True
    assert devs.describe_all().keys() == {"gpu0"}


def test_real_pynvml_without_gpu_gives_reason() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - only on a GPU machine
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here")
    with pytest.raises(DeviceUnavailable) as info:
        NvmlDevices.open(None)
    assert info.value.reason


# --------------------------------------------------------------------- instant power
@pytest.mark.parametrize(
    ("value_type", "member"),
    [
        (fk.NVML_VALUE_TYPE_UNSIGNED_INT, "uiVal"),
        (fk.NVML_VALUE_TYPE_SIGNED_INT, "siVal"),
        (fk.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, "ullVal"),
        (fk.NVML_VALUE_TYPE_DOUBLE, "dVal"),
    ],
)
def test_instant_power_is_read_by_value_type(value_type: int, member: str) -> None:
    nv = FakeNvml([FakeGpu(instant_power_mw=412_345, instant_value_type=value_type, power_mw=300_000)])
    devs = _open(nv)
    assert devs.instant_power_mw(0) == 412_345
    assert devs.power_source(0) == "instant"
    assert devs.polled_power_mw(0) == 412_345  # not the 300 W average
    raw = nv.nvmlDeviceGetFieldValues(nv.nvmlDeviceGetHandleByIndex(0), [fk.NVML_FI_DEV_POWER_INSTANT])[0]
    assert getattr(raw.value, member) == pytest.approx(412_345)


def test_unsupported_instant_field_falls_back_to_average() -> None:
    nv = FakeNvml([FakeGpu(power_mw=[250_000, 260_000])])  # instant field unsupported (the default)
    devs = _open(nv)
    with pytest.raises(ReadNotSupported, match="instant power"):
        devs.instant_power_mw(0)
    assert devs.power_source(0) == "average"
    assert devs.polled_power_mw(0) == 250_000
    assert devs.polled_power_mw(0) == 260_000
    probes = [c for c in nv.calls if c[0] == "nvmlDeviceGetFieldValues"]
    assert len(probes) == 2  # the explicit read and one probe: the source is remembered


def test_instant_power_checks_each_values_return_code() -> None:
    gpu = FakeGpu(instant_power_mw=500_000, instant_power_return=[fk.NVML_SUCCESS, fk.NVML_ERROR_GPU_IS_LOST])
    devs = _open(FakeNvml([gpu]))
    assert devs.instant_power_mw(0) == 500_000
    with pytest.raises(DeviceLost):
        devs.instant_power_mw(0)  # the call succeeded, the value did not


def test_field_values_call_failing_means_average() -> None:
    gpu = FakeGpu(instant_power_mw=1, errors={"nvmlDeviceGetFieldValues": fk.NVMLError_FunctionNotFound})
    devs = _open(FakeNvml([gpu]))
    assert devs.power_source(0) == "average"
    lost = _open(FakeNvml([FakeGpu(errors={"nvmlDeviceGetFieldValues": fk.NVMLError_GpuIsLost})]))
    with pytest.raises(DeviceLost):
        lost.power_source(0)


def test_describe_records_the_power_source() -> None:
    devs = _open(FakeNvml([FakeGpu(instant_power_mw=1), FakeGpu()]))
    assert devs.describe(0)["power_source"] == "instant"
    assert devs.describe(1)["power_source"] == "average"


# --------------------------------------------------------------------- counter update period
def _stepping(period: float, latency: float = 0.002, **kw: object) -> tuple[NvmlDevices, FakeNvml]:
    clock = FakeClock(5.0)
    gpu = FakeGpu(energy_mj=lambda t: int(250_000 * t), energy_update_period_s=period, **kw)  # type: ignore[arg-type]
    nv = FakeNvml([gpu], clock=clock, call_latency_s=latency)
    return NvmlDevices.open(None, nvml=nv, environ={}, clock=clock), nv


@pytest.mark.parametrize("period", [0.1, 0.02, 0.05])
def test_counter_update_period_is_measured(period: float) -> None:
    devs, nv = _stepping(period)
    measured = devs.counter_update_period_s(0)
    assert measured == pytest.approx(period, abs=0.0025)  # within one read
    assert nv.clock() - 5.0 <= 5 * period + 0.01  # stopped after the changes it needed


def test_counter_update_period_gives_up_after_the_time_limit() -> None:
    devs, nv = _stepping(1.0)  # too slow for the limit
    assert devs.counter_update_period_s(0, changes=3, timeout_s=0.5) is None
    assert nv.clock() - 5.0 == pytest.approx(0.5, abs=0.01)


def test_counter_update_period_with_a_frozen_clock_returns() -> None:
    nv = FakeNvml([FakeGpu(energy_mj=lambda t: int(1000 * t))])  # a FakeClock that never moves
    devs = NvmlDevices.open(None, nvml=nv, environ={}, clock=nv.clock)
    assert devs.counter_update_period_s(0) is None
    assert len(nv.calls) < 2000  # gave up instead of spinning


def test_counter_update_period_unreadable_counter_raises() -> None:
    devs = _open(FakeNvml([FakeGpu(errors={"nvmlDeviceGetTotalEnergyConsumption": fk.NVMLError_NotSupported})]))
    with pytest.raises(ReadNotSupported):
        devs.counter_update_period_s(0)
    with pytest.raises(ValueError):
        devs.counter_update_period_s(0, changes=0)


def test_counter_update_period_is_cached_per_uuid() -> None:
    devs, nv = _stepping(0.1)
    assert devs.cached_counter_update_period_s(0) == pytest.approx(0.1, abs=0.0025)
    def counter_reads() -> int:
        return sum(1 for name, _ in nv.calls if name == "nvmlDeviceGetTotalEnergyConsumption")

    reads = counter_reads()
    again = NvmlDevices.open(None, nvml=nv, environ={}, clock=nv.clock)
    assert again.cached_counter_update_period_s(0) == pytest.approx(0.1, abs=0.0025)
    assert counter_reads() == reads  # a hardware property: measured once per GPU per process
    other, _ = _stepping(0.05, uuid="GPU-other")
    assert other.cached_counter_update_period_s(0) == pytest.approx(0.05, abs=0.0025)


# --------------------------------------------------------------------- state
def test_state_for_the_baseline() -> None:
    gpu = FakeGpu(memory_used=3 * 2**30, temperature_c=33, sm_clock_mhz=345, pstate=8)
    devs = _open(FakeNvml([gpu, FakeGpu(pstate=fk.NVML_PSTATE_UNKNOWN, errors={
        "nvmlDeviceGetTemperature": fk.NVMLError_NotSupported})]))
    state = devs.state(0)
    assert (state.memory_used_bytes, state.temperature_c, state.sm_clock_mhz, state.pstate) == (3 * 2**30, 33, 345, 8)
    other = devs.state(1)
    assert other.temperature_c is None and other.pstate is None


# --------------------------------------------------------------------- GPUs NVML counts but will not open
REFUSED = {"nvmlDeviceGetHandleByIndex": fk.NVMLError_NoPermission}


def _constrained() -> FakeNvml:
    """A four-GPU node seen from a job whose device cgroup allows GPUs 1 and 3 only."""
    return FakeNvml([FakeGpu(uuid=f"GPU-bbbb{n}-2222", errors=REFUSED if n in (0, 2) else {}) for n in range(4)])


def test_refused_handles_are_skipped_and_the_rest_opened() -> None:
    devs = _open(_constrained())
    assert devs.indices == [0, 1]
    assert [devs.nvml_index(i) for i in devs.indices] == [1, 3]
    assert [devs.uuid(i) for i in devs.indices] == ["GPU-bbbb1-2222", "GPU-bbbb3-2222"]
    assert devs.refused == {0: "insufficient permissions", 2: "insufficient permissions"}
    assert devs.energy_mj(1) == 0  # the opened handles read
    devs.close()


def test_refused_handles_job_gpus_matched_by_uuid_and_by_job_relative_index() -> None:
    # a launcher pins the job by UUID: the UUID decides, whatever NVML refused before it
    by_uuid = _open(_constrained(), None, {"CUDA_VISIBLE_DEVICES": "GPU-bbbb3-2222"})
    assert by_uuid.indices == [0] and by_uuid.nvml_index(0) == 3 and by_uuid.uuid(0) == "GPU-bbbb3-2222"
    # SLURM's job-relative index: CUDA, like NVML, sees only the GPUs the cgroup allows
    relative = _open(_constrained(), None, {"CUDA_VISIBLE_DEVICES": "1"})
    assert relative.indices == [0] and relative.uuid(0) == "GPU-bbbb3-2222"
    assert visible_gpu_count(nvml_module=_constrained(), environ={}) == 2


def test_a_job_gpu_nvml_refuses_is_unavailable_with_the_reason() -> None:
    nv = _constrained()
    with pytest.raises(DeviceUnavailable, match="NVML could not open NVML GPU 0: insufficient permissions"):
        _open(nv, None, {"CUDA_VISIBLE_DEVICES": "GPU-bbbb2-2222"})
    assert nv.initialised == 0
    every = FakeNvml([FakeGpu(errors=REFUSED), FakeGpu(errors={"nvmlDeviceGetHandleByIndex": fk.NVMLError_GpuIsLost})])
    with pytest.raises(DeviceUnavailable, match="none of the 2 GPU.s. NVML counts can be opened .*GPU is lost"):
        _open(every)


# --------------------------------------------------------------------- visible GPUs
def test_visible_gpu_count() -> None:
    nv = _three()
    assert visible_gpu_count(nvml_module=nv, environ={}) == 3
    assert visible_gpu_count(nvml_module=nv, environ={"CUDA_VISIBLE_DEVICES": "2"}) == 1
    assert visible_gpu_count(nvml_module=nv, environ={"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert nv.initialised == 0  # NVML released after counting
    missing = FakeNvml([], init_error=fk.NVMLError_LibraryNotFound)
    assert visible_gpu_count(nvml_module=missing, environ={}) == 0
    # MIG instances are GPUs the job uses, though NVML cannot measure them
    assert visible_gpu_count(nvml_module=nv, environ={"CUDA_VISIBLE_DEVICES": "MIG-aaaa,MIG-bbbb"}) == 2
