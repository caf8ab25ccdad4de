"""TelemetrySampler rows, summaries and the atomic Parquet write."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from tests.fakes import fake_pynvml as fk
from tests.fakes.fake_pynvml import FakeClock, FakeGpu, FakeNvml

from llem.energy.devices.nvml import NvmlDevices
from llem.energy.sampler import COLUMNS, TelemetrySampler


def _devices(*gpus: FakeGpu, clock: FakeClock) -> NvmlDevices:
    return NvmlDevices.open(None, nvml=FakeNvml(list(gpus), clock=clock), environ={})


def test_rows_hand_checked() -> None:
    clock = FakeClock(100.0)
    devs = _devices(
        FakeGpu(power_mw=[250_000, 300_000, 310_000], temperature_c=[60, 65, 70], clock_reasons=[0, 0, 0x40],
                memory_used=[10, 20, 30], util_gpu=99, util_mem=45),
        FakeGpu(power_mw=75_500, errors={"nvmlDeviceGetTemperature": fk.NVMLError_NotSupported}),
        clock=clock,
    )
    sampler = TelemetrySampler(devs, 0.5, clock=clock, start_thread=False)
    sampler.start()  # first reading at t=0
    clock.advance(0.5)
    sampler.sample_once()
    clock.advance(0.5)
    rows = sampler.stop()  # last reading at t=1
    assert len(rows) == 6
    assert sampler.samples == 3
    gpu0 = [r for r in rows if r["device"] == "gpu0"]
    assert [r["t_s"] for r in gpu0] == pytest.approx([0.0, 0.5, 1.0])
    assert [r["power_w"] for r in gpu0] == pytest.approx([250.0, 300.0, 310.0])
    assert [r["temperature_c"] for r in gpu0] == [60, 65, 70]
    assert [r["throttle_thermal"] for r in gpu0] == [False, False, True]
    assert [r["mem_used_bytes"] for r in gpu0] == [10, 20, 30]
    assert gpu0[0]["sm_clock_mhz"] == 1980 and gpu0[0]["mem_clock_mhz"] == 2619
    assert gpu0[0]["gpu_util_pct"] == 99 and gpu0[0]["mem_util_pct"] == 45
    gpu1 = [r for r in rows if r["device"] == "gpu1"]
    assert all(r["temperature_c"] is None for r in gpu1)  # unreadable is None, not 0
    assert gpu1[0]["power_w"] == pytest.approx(75.5)
    assert set(rows[0]) == set(COLUMNS)
    assert sampler.throttled is True
    summary = sampler.summary()
    assert summary["gpu0"]["max_temperature_c"] == 70
    assert summary["gpu0"]["max_power_w"] == pytest.approx(310.0)
    assert summary["gpu0"]["throttle_thermal"] is True
    assert summary["gpu1"]["max_temperature_c"] is None


def test_unreadable_power_leaves_other_columns() -> None:
    clock = FakeClock()
    no_power = {"nvmlDeviceGetPowerUsage": fk.NVMLError_NotSupported}
    devs = _devices(FakeGpu(temperature_c=55, errors=no_power), clock=clock)
    sampler = TelemetrySampler(devs, 1.0, clock=clock, start_thread=False)
    sampler.sample_once()
    (row,) = sampler.rows
    assert row["power_w"] is None and row["temperature_c"] == 55


def test_lost_gpu_row_is_all_none() -> None:
    clock = FakeClock()
    devs = _devices(FakeGpu(errors={"nvmlDeviceGetPowerUsage": fk.NVMLError_GpuIsLost}), clock=clock)
    sampler = TelemetrySampler(devs, 1.0, clock=clock, start_thread=False)
    sampler.sample_once()
    (row,) = sampler.rows
    assert row["device"] == "gpu0"
    assert all(row[c] is None for c in COLUMNS if c not in ("t_s", "device"))


def test_parquet_round_trip_is_atomic(tmp_path: Path) -> None:
    clock = FakeClock()
    devs = _devices(FakeGpu(power_mw=[100_000, 200_000], clock_reasons=[0, 0x20]), FakeGpu(errors={
        "nvmlDeviceGetTemperature": fk.NVMLError_NotSupported}), clock=clock)
    sampler = TelemetrySampler(devs, 1.0, clock=clock, start_thread=False)
    sampler.start()
    clock.advance(1.0)
    rows = sampler.stop()
    out = sampler.to_parquet(tmp_path / "sub" / "telemetry.parquet")
    assert sorted(p.name for p in out.parent.iterdir()) == ["telemetry.parquet"]  # no temp file left
    df = pd.read_parquet(out)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == len(rows) == 4
    assert df["power_w"].tolist()[:1] == [100.0]
    assert df.loc[df.device == "gpu0", "throttle_thermal"].tolist() == [False, True]
    assert df.loc[df.device == "gpu1", "temperature_c"].isna().all()
    # overwriting replaces the file in one step
    sampler.to_parquet(out)
    assert len(pd.read_parquet(out)) == 4


def test_no_devices_records_nothing_and_says_so(tmp_path: Path) -> None:
    sampler = TelemetrySampler(None, 0.1)
    sampler.start()
    assert sampler.stop() == []
    assert sampler.samples == 0
    assert sampler.throttled is False
    assert sampler.unavailable_reason and "not recorded" in sampler.unavailable_reason
    df = pd.read_parquet(sampler.to_parquet(tmp_path / "t.parquet"))
    assert len(df) == 0 and list(df.columns) == list(COLUMNS)


def test_thread_samples_in_real_time() -> None:
    devs = _devices(FakeGpu(), FakeGpu(), clock=FakeClock())
    sampler = TelemetrySampler(devs, 0.01)  # real monotonic clock
    sampler.start()
    time.sleep(0.1)
    rows = sampler.stop()
    assert sampler.samples >= 4
    times = [r["t_s"] for r in rows if r["device"] == "gpu0"]
    assert times == sorted(times) and times[0] >= 0.0
    with pytest.raises(ValueError):
        TelemetrySampler(devs, 0)


def test_stop_after_devices_closed_is_harmless() -> None:
    clock = FakeClock()
    devs = _devices(FakeGpu(), clock=clock)
    sampler = TelemetrySampler(devs, 1.0, clock=clock, start_thread=False)
    sampler.start()
    devs.close()
    assert len(sampler.stop()) == 1


def test_power_column_is_instant_where_supported() -> None:
    clock = FakeClock()
    devs = _devices(FakeGpu(power_mw=100_000, instant_power_mw=420_000), FakeGpu(power_mw=90_000), clock=clock)
    sampler = TelemetrySampler(devs, 1.0, clock=clock, start_thread=False)
    sampler.sample_once()
    by_dev = {r["device"]: r["power_w"] for r in sampler.rows}
    assert by_dev == {"gpu0": pytest.approx(420.0), "gpu1": pytest.approx(90.0)}
