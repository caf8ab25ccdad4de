"""Energy measurement: device access, meters, telemetry, idle baseline and quality checks.

Typical use by the harness::

    meter = select_meter(cfg.energy.source, cfg.energy.devices, cfg.energy.sample_interval_ms / 1000)
    baseline = measure_baseline(meter, cfg.baseline.duration_seconds)
    sampler = TelemetrySampler(meter.nvml_devices, interval_s)
    sampler.start(); meter.begin_window("run"); ...; window = meter.end_window("run"); sampler.stop()
    adjusted = adjust_window(window, baseline)
    warnings = quality_warnings(window, tolerance_pct=..., samples=sampler.samples, ...)
    meter.close()
"""

from __future__ import annotations

from llem.energy.baseline import (
    AdjustedEnergy,
    BaselineResult,
    adjust_window,
    adjusted_energy_j,
    baseline_from_window,
    energy_per_token_j,
    measure_baseline,
)
from llem.energy.devices import (
    DeviceLost,
    DeviceReadError,
    DeviceUnavailable,
    NvmlDevices,
    RaplDomains,
    ReadNoPermission,
    ReadNotSupported,
)
from llem.energy.meters import (
    CrossCheckedMeter,
    EnergyMeter,
    EnergyWindow,
    NullMeter,
    NvmlCounterMeter,
    NvmlPollingMeter,
    RaplMeter,
    select_meter,
)
from llem.energy.quality import quality_warnings
from llem.energy.sampler import TelemetrySampler

__all__ = [
    "AdjustedEnergy",
    "BaselineResult",
    "CrossCheckedMeter",
    "DeviceLost",
    "DeviceReadError",
    "DeviceUnavailable",
    "EnergyMeter",
    "EnergyWindow",
    "NullMeter",
    "NvmlCounterMeter",
    "NvmlDevices",
    "NvmlPollingMeter",
    "RaplDomains",
    "RaplMeter",
    "ReadNoPermission",
    "ReadNotSupported",
    "TelemetrySampler",
    "adjust_window",
    "adjusted_energy_j",
    "baseline_from_window",
    "energy_per_token_j",
    "measure_baseline",
    "quality_warnings",
    "select_meter",
]
