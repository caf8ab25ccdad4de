"""NvmlDevices against the scripted fake: opening, index mapping, readings and error translation."""

from __future__ import annotations

import pytest

from tests.fakes.fake_pynvml import FakeGpu, FakeNvml
from tests.fakes import fake_pynvml as fk

from llem.energy.devices import DeviceLost, DeviceReadError, DeviceUnavailable, ReadNoPermission, ReadNotSupported
from llem.energy.devices.nvml import NvmlDevices


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
