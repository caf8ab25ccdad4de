"""Energy measurement: device access, meters, the job-level monitor, telemetry, idle baseline and quality checks.

Typical use by the harness::

    job_gpus = ...  # CUDA indices the job's engine uses, out of visible_gpu_count(); [] for a CPU job
    monitor = open_monitor(cfg.energy.source, job_gpus, include_host=cfg.energy.include_host,
                           interval_s=cfg.energy.sample_interval_ms / 1000)
    baseline = measure_baseline(monitor, cfg.baseline.duration_seconds, settle_s=cfg.baseline.settle_seconds)
    sampler = TelemetrySampler(monitor.nvml_devices, interval_s)
    sampler.start(); monitor.begin_window("run"); ...; window = monitor.end_window("run"); sampler.stop()
    adjusted = adjust_window(window, baseline, monitor.baseline_key)
    warnings = quality_warnings(window, update_periods_s=monitor.update_periods_s, samples=sampler.samples, ...)
    failures = quality_failures(window)  # a GPU in scope whose energy could not be read voids the figure
    monitor.close()
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
    visible_gpu_count,
)
from llem.energy.meters import (
    CrossCheckedMeter,
    EnergyMeter,
    EnergyWindow,
    NvmlCounterMeter,
    NvmlPollingMeter,
    RaplMeter,
)
from llem.energy.monitor import ComponentEnergy, EnergyMonitor, MonitorWindow, open_monitor, with_unmeasured_component
from llem.energy.quality import quality_failures, quality_status, quality_warnings
from llem.energy.sampler import TelemetrySampler

__all__ = [
    "AdjustedEnergy",
    "BaselineResult",
    "ComponentEnergy",
    "CrossCheckedMeter",
    "DeviceLost",
    "DeviceReadError",
    "DeviceUnavailable",
    "EnergyMeter",
    "EnergyMonitor",
    "EnergyWindow",
    "MonitorWindow",
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
    "open_monitor",
    "quality_failures",
    "quality_status",
    "quality_warnings",
    "visible_gpu_count",
    "with_unmeasured_component",
]
