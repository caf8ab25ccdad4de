"""select_meter: the auto fallback chain, explicit sources, and this GPU-less machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import fake_pynvml as fk
from tests.fakes.fake_pynvml import FakeClock, FakeGpu, FakeNvml

from llem.energy.devices import DeviceUnavailable
from llem.energy.devices.rapl import DEFAULT_ROOT, RaplDomains
from llem.energy.meters import (
    CrossCheckedMeter,
    NullMeter,
    NvmlCounterMeter,
    NvmlPollingMeter,
    RaplMeter,
    select_meter,
)

NO_COUNTER = {"nvmlDeviceGetTotalEnergyConsumption": fk.NVMLError_NotSupported}
NO_POWER = {"nvmlDeviceGetPowerUsage": fk.NVMLError_NotSupported}


def _rapl(tmp_path: Path) -> Path:
    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("1000\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    return tmp_path / "powercap"


def _select(source: str, nv: FakeNvml | None, rapl_root: Path, **kw: object):
    return select_meter(
        source, None, 0.1, nvml_module=nv, rapl_root=rapl_root, start_thread=False, environ={}, **kw
    )


def test_auto_prefers_counter_with_cross_check(tmp_path: Path) -> None:
    clock = FakeClock()
    nv = FakeNvml([FakeGpu(energy_mj=lambda t: 200_000 * t), FakeGpu(energy_mj=lambda t: 100_000 * t)], clock=clock)
    meter = _select("auto", nv, _rapl(tmp_path), clock=clock)
    assert isinstance(meter, CrossCheckedMeter)
    assert meter.source == "nvml"
    meter.begin_window("run")
    clock.advance(2.0)
    w = meter.end_window("run")
    assert w.total_j == pytest.approx(600.0)
    assert w.polled_total_j == pytest.approx(400.0)  # both fakes draw a constant 100 W
    meter.close()
    assert nv.initialised == 0


def test_auto_counter_without_cross_check(tmp_path: Path) -> None:
    nv = FakeNvml([FakeGpu()])
    meter = _select("auto", nv, _rapl(tmp_path), cross_check=False)
    assert type(meter) is NvmlCounterMeter
    meter.close()
    assert nv.initialised == 0


def test_counter_not_supported_falls_back_to_polling(tmp_path: Path) -> None:
    nv = FakeNvml([FakeGpu(), FakeGpu(errors=NO_COUNTER)])
    meter = _select("auto", nv, _rapl(tmp_path))
    assert isinstance(meter, NvmlPollingMeter)
    assert meter.source == "nvml_polling"
    meter.close()
    assert nv.initialised == 0


def test_explicit_nvml_without_counter_fails_with_reason(tmp_path: Path) -> None:
    nv = FakeNvml([FakeGpu(), FakeGpu(errors=NO_COUNTER)])
    with pytest.raises(DeviceUnavailable) as info:
        _select("nvml", nv, _rapl(tmp_path))
    assert "gpu1" in info.value.reason and "nvml_polling" in info.value.reason
    assert nv.initialised == 0


def test_explicit_polling(tmp_path: Path) -> None:
    nv = FakeNvml([FakeGpu(errors=NO_COUNTER)])
    meter = _select("nvml_polling", nv, _rapl(tmp_path))
    assert isinstance(meter, NvmlPollingMeter)
    meter.close()
    nv = FakeNvml([FakeGpu(errors=NO_POWER)])
    with pytest.raises(DeviceUnavailable, match="power reading unavailable"):
        _select("nvml_polling", nv, _rapl(tmp_path))


def test_library_not_found_falls_back_to_rapl(tmp_path: Path) -> None:
    nv = FakeNvml([], init_error=fk.NVMLError_LibraryNotFound)
    meter = _select("auto", nv, _rapl(tmp_path))
    assert isinstance(meter, RaplMeter)
    assert meter.source == "rapl"
    meter.close()


def test_library_not_found_and_no_rapl_gives_null_with_reasons(tmp_path: Path) -> None:
    nv = FakeNvml([], init_error=fk.NVMLError_LibraryNotFound)
    meter = _select("auto", nv, tmp_path / "missing")
    assert isinstance(meter, NullMeter)
    meter.begin_window("run")
    w = meter.end_window("run")
    assert w.total_j is None
    reason = w.unavailable_reason or ""
    assert "nvml: NVML library not found (no NVIDIA driver)" in reason
    assert "rapl: RAPL not available" in reason


def test_no_counter_and_no_power_falls_through(tmp_path: Path) -> None:
    nv = FakeNvml([FakeGpu(errors={**NO_COUNTER, **NO_POWER})])
    meter = _select("auto", nv, tmp_path / "missing")
    assert isinstance(meter, NullMeter)
    assert "nvml_polling: power reading unavailable" in meter.reason
    assert nv.initialised == 0


def test_lost_gpu_during_selection_falls_through(tmp_path: Path) -> None:
    nv = FakeNvml([FakeGpu(errors={"nvmlDeviceGetTotalEnergyConsumption": fk.NVMLError_GpuIsLost})])
    meter = _select("auto", nv, _rapl(tmp_path))
    assert isinstance(meter, RaplMeter)
    assert nv.initialised == 0


def test_other_explicit_sources(tmp_path: Path) -> None:
    assert isinstance(_select("rapl", None, _rapl(tmp_path)), RaplMeter)
    with pytest.raises(DeviceUnavailable, match="RAPL"):
        _select("rapl", None, tmp_path / "missing")
    none = _select("none", None, tmp_path)
    assert isinstance(none, NullMeter) and "disabled" in none.reason
    with pytest.raises(ValueError):
        _select("bogus", None, tmp_path)
    nv = FakeNvml([], init_error=fk.NVMLError_LibraryNotFound)
    with pytest.raises(DeviceUnavailable, match="NVML library not found"):
        _select("nvml", nv, tmp_path)


def _nvml_works() -> bool:
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()  # pragma: no cover - GPU machines only
    return True  # pragma: no cover


def _rapl_works() -> bool:
    try:
        RaplDomains(DEFAULT_ROOT)
    except DeviceUnavailable:
        return False
    return True  # pragma: no cover - machines with readable RAPL only


@pytest.mark.skipif(_nvml_works() or _rapl_works(), reason="this machine has a real energy source")
def test_this_machine_auto_is_null_meter_with_reason() -> None:
    meter = select_meter("auto", None, 0.1)
    try:
        assert isinstance(meter, NullMeter)
        meter.begin_window("run")
        w = meter.end_window("run")
    finally:
        meter.close()
    assert w.total_j is None
    assert w.unavailable_reason and "nvml:" in w.unavailable_reason and "rapl:" in w.unavailable_reason
