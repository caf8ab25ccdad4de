"""Pick one energy meter from `energy.source`, falling back in a fixed order for `auto`.

This chooses a single source for a fixed device set; `llem.energy.monitor.open_monitor`
is the job-level API (the job's own GPUs plus CPU package and DRAM in one window).

`auto` prefers the NVML energy counter, then integrated NVML power, then RAPL,
and ends with a NullMeter whose reason says why each source was rejected, so a
result never shows 0 J for energy nobody measured. An explicit source that is
unavailable raises DeviceUnavailable: the user asked for it, so the job fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llem.energy.devices import DeviceLost, DeviceReadError, DeviceUnavailable
from llem.energy.devices.nvml import NvmlDevices
from llem.energy.devices.rapl import DEFAULT_ROOT, RaplDomains
from llem.energy.meters.base import EnergyMeter
from llem.energy.meters.crosscheck import CrossCheckedMeter
from llem.energy.meters.null import NullMeter
from llem.energy.meters.nvml_counter import NvmlCounterMeter
from llem.energy.meters.nvml_polling import NvmlPollingMeter
from llem.energy.meters.rapl import RaplMeter

Clock = Callable[[], float]


def _counter_problem(devices: NvmlDevices) -> str | None:
    bad = [devices.label(i) for i in devices.indices if not devices.supports_energy_counter(i)]
    if bad:
        return f"energy counter not supported on {', '.join(bad)} (needs Volta or newer)"
    return None


def _power_problem(devices: NvmlDevices) -> str | None:
    problems = []
    for i in devices.indices:
        try:
            devices.polled_power_mw(i)
        except DeviceLost:
            raise
        except DeviceReadError as exc:
            problems.append(f"{devices.label(i)}: {exc.reason}")
    if problems:
        return "power reading unavailable (" + "; ".join(problems) + ")"
    return None


def _nvml_meter(
    devices: NvmlDevices, interval_s: float, cross_check: bool, clock: Clock, start_thread: bool
) -> EnergyMeter:
    if not cross_check or _power_problem(devices) is not None:
        return NvmlCounterMeter(devices, clock=clock, owns_devices=True)
    counter = NvmlCounterMeter(devices, clock=clock)
    polling = NvmlPollingMeter(devices, interval_s, clock=clock, start_thread=start_thread)
    return CrossCheckedMeter(counter, polling, owns_devices=True)


def _open_nvml(devices: list[int] | None, nvml_module: Any, environ: Mapping[str, str] | None) -> NvmlDevices:
    try:
        return NvmlDevices.open(devices, nvml=nvml_module, environ=environ)
    except DeviceLost as exc:
        raise DeviceUnavailable(str(exc)) from exc


def select_meter(
    source: str,
    devices: list[int] | None,
    interval_s: float,
    *,
    nvml_module: Any = None,
    rapl_root: str | Path = DEFAULT_ROOT,
    cross_check: bool = True,
    clock: Clock = time.monotonic,
    start_thread: bool = True,
    environ: Mapping[str, str] | None = None,
) -> EnergyMeter:
    """Build the meter for `source` ("auto", "nvml", "nvml_polling", "rapl" or "none").

    `interval_s` is the polling period for integrated power; `devices` are CUDA
    indices (None: all visible). `cross_check` also integrates power alongside
    the counter. The caller owns the returned meter and must `close()` it.
    """
    if source == "none":
        return NullMeter("energy measurement disabled (energy.source = none)", clock=clock)
    if source == "rapl":
        return RaplMeter(RaplDomains(rapl_root), clock=clock, wrap_guard_s=30.0 if start_thread else None)
    if source in ("nvml", "nvml_polling"):
        nv = _open_nvml(devices, nvml_module, environ)
        try:
            if source == "nvml":
                problem = _counter_problem(nv)
                if problem:
                    raise DeviceUnavailable(f"{problem}; use energy.source=nvml_polling")
                return _nvml_meter(nv, interval_s, cross_check, clock, start_thread)
            problem = _power_problem(nv)
            if problem:
                raise DeviceUnavailable(problem)
            return NvmlPollingMeter(nv, interval_s, clock=clock, owns_devices=True, start_thread=start_thread)
        except DeviceUnavailable:
            nv.close()
            raise
        except DeviceReadError as exc:
            nv.close()
            raise DeviceUnavailable(str(exc)) from exc
    if source != "auto":
        raise ValueError(f"unknown energy source {source!r}")

    reasons: list[str] = []
    try:
        nv = _open_nvml(devices, nvml_module, environ)
    except DeviceUnavailable as exc:
        reasons.append(f"nvml: {exc.reason}")
    else:
        try:
            counter_problem = _counter_problem(nv)
            if counter_problem is None:
                return _nvml_meter(nv, interval_s, cross_check, clock, start_thread)
            reasons.append(f"nvml: {counter_problem}")
            power_problem = _power_problem(nv)
            if power_problem is None:
                return NvmlPollingMeter(nv, interval_s, clock=clock, owns_devices=True, start_thread=start_thread)
            reasons.append(f"nvml_polling: {power_problem}")
        except DeviceReadError as exc:
            reasons.append(f"nvml: {exc}")
        nv.close()
    try:
        return RaplMeter(RaplDomains(rapl_root), clock=clock, wrap_guard_s=30.0 if start_thread else None)
    except DeviceUnavailable as exc:
        reasons.append(f"rapl: {exc.reason}")
    return NullMeter("no energy source available: " + "; ".join(reasons), clock=clock)
