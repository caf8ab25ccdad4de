"""The job's energy in one window API: its own GPUs, the CPU packages and DRAM, side by side.

`open_monitor` decides what a job's energy covers from `energy.source`, the CUDA
indices the job runs on and `energy.include_host`, opens the devices through the
device layer (`NvmlDevices`, `RaplDomains`) and builds the meters. Each window
then reports one `ComponentEnergy` per included component ("gpu", "cpu",
"dram") and a total that is null, with the reason, as soon as one included
component could not be measured, so a total never silently leaves part out.
What was left out of scope, and why, is in `scope` and in every window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llem.energy.devices import DeviceLost, DeviceReadError, DeviceUnavailable
from llem.energy.devices.nvml import NvmlDevices
from llem.energy.devices.rapl import DEFAULT_ROOT, DRAM, PACKAGE, RaplDomains
from llem.energy.meters.base import EnergyMeter, EnergyWindow
from llem.energy.meters.crosscheck import CrossCheckedMeter
from llem.energy.meters.nvml_counter import NvmlCounterMeter
from llem.energy.meters.nvml_polling import NvmlPollingMeter
from llem.energy.meters.rapl import RaplMeter

GPU, CPU = "gpu", "cpu"
NO_GPU_REASON = "job uses no GPU"
COMPONENTS = (GPU, CPU, DRAM)
SOURCES = ("auto", "nvml", "nvml_polling", "rapl", "none")
# How the counter's update period is measured when the monitor opens (see NvmlDevices.counter_update_period_s).
UPDATE_PERIOD_CHANGES = 3
UPDATE_PERIOD_TIMEOUT_S = 2.0
RAPL_WRAP_GUARD_S = 30.0


@dataclass
class ComponentEnergy:
    """One component's energy over a window; `joules` is None (with the reason) when it was not measured."""

    source: str
    joules: float | None
    devices: list[str]
    per_device: dict[str, float | None]
    unavailable_reason: str | None = None
    polled_j: float | None = None  # GPU counter windows: integrated power over the same window
    polled_source: str | None = None  # "instant" | "average" | "mixed": which power reading was integrated
    duration_s: float | None = None  # as timed by this component's meter
    polled_per_device: dict[str, float | None] | None = None


@dataclass
class MonitorWindow:
    """Energy of every included component over one named window."""

    name: str
    duration_s: float
    components: dict[str, ComponentEnergy]
    excluded: dict[str, str]
    total_j: float | None
    unavailable_reason: str | None
    resolution_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Component:
    """How one included component is measured: which meter, and which of its devices."""

    name: str
    source: str
    devices: list[str]
    meter: EnergyMeter | None = None  # None: in scope but not measurable (`reason` says why)
    reason: str | None = None


@dataclass
class _Plan:
    components: dict[str, _Component] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    nvml: NvmlDevices | None = None
    gpu_indices: list[int] = field(default_factory=list)  # CUDA indices of the GPU component
    rapl: RaplDomains | None = None
    meters: list[EnergyMeter] = field(default_factory=list)
    update_periods_s: dict[str, float | None] = field(default_factory=dict)

    def close(self) -> None:
        for meter in reversed(self.meters):
            meter.close()
        if self.nvml is not None:
            self.nvml.close()


class EnergyMonitor:
    """Begin/end windows over every component in the job's scope; built by `open_monitor`."""

    def __init__(self, plan: _Plan, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._plan = plan
        self._components = plan.components
        self._clock = clock
        self._windows: dict[str, float | None] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.nvml_devices: NvmlDevices | None = plan.nvml
        self.update_periods_s: dict[str, float | None] = dict(plan.update_periods_s)
        gpu = self._components.get(GPU)
        self.polled_source: str | None = getattr(gpu.meter, "polled_source", None) if gpu else None
        measured = [c for c in self._components.values() if c.meter is not None]
        self.source: str = "+".join(dict.fromkeys(c.source for c in measured)) or "none"
        resolutions = [c.meter.resolution_s for c in measured if c.meter is not None and c.meter.resolution_s]
        self.resolution_s: float | None = max(resolutions) if resolutions else None
        self.measured: list[str] = [k for k, c in self._components.items() if c.meter is not None]
        self.scope: dict[str, Any] = {
            "included": list(self._components),
            "measured": list(self.measured),
            "excluded": dict(plan.excluded),
            "unavailable": {k: c.reason for k, c in self._components.items() if c.meter is None},
            "devices": {k: list(c.devices) for k, c in self._components.items()},
            "sources": {k: c.source for k, c in self._components.items()},
        }
        if gpu is not None:
            self.scope["cuda_indices"] = list(plan.gpu_indices)
        if plan.nvml is not None:
            self.scope["gpu_uuids"] = {plan.nvml.label(i): plan.nvml.uuid(i) for i in plan.nvml.indices}
            if plan.nvml.refused:
                self.scope["nvml_refused"] = {f"nvml{n}": reason for n, reason in plan.nvml.refused.items()}
        self.baseline_key: str = self._key()

    def _key(self) -> str:
        """Sources and device identities; an idle baseline applies only to windows with the same key."""
        parts = []
        for name, comp in self._components.items():
            ids = comp.devices
            if name == GPU and self._plan.nvml is not None:
                ids = [self._plan.nvml.uuid(i) for i in self._plan.nvml.indices]
            source = comp.source if comp.meter is not None else "unavailable"
            parts.append(f"{name}={source}[{','.join(ids)}]")
        return ";".join(parts) or "none"

    # ------------------------------------------------------------------ windows
    def begin_window(self, name: str) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("energy monitor is closed")
            if name in self._windows:
                raise ValueError(f"energy window {name!r} is already open")
            self._windows[name] = None
        begun: list[EnergyMeter] = []
        try:
            t0 = self._clock()
            for meter in self._plan.meters:
                meter.begin_window(name)
                begun.append(meter)
        except BaseException:
            for meter in reversed(begun):
                meter.end_window(name)
            with self._lock:
                self._windows.pop(name, None)
            raise
        with self._lock:
            self._windows[name] = t0

    def end_window(self, name: str) -> MonitorWindow:
        with self._lock:
            t0 = self._windows.get(name)
            if t0 is None:  # unknown, or still being opened
                raise KeyError(f"no open energy window named {name!r}")
            del self._windows[name]
        windows: dict[int, EnergyWindow] = {}
        for meter in reversed(self._plan.meters):  # the first begun closes last
            windows[id(meter)] = meter.end_window(name)
        duration = self._clock() - t0
        components = {
            key: self._component(comp, None if comp.meter is None else windows[id(comp.meter)])
            for key, comp in self._components.items()
        }
        total, reason = _total(components, self._plan.excluded)
        return MonitorWindow(
            name=name,
            duration_s=duration,
            components=components,
            excluded=dict(self._plan.excluded),
            total_j=total,
            unavailable_reason=reason,
            resolution_s=self.resolution_s,
        )

    @staticmethod
    def _component(comp: _Component, window: EnergyWindow | None) -> ComponentEnergy:
        if window is None:
            return ComponentEnergy(
                source=comp.source, joules=None, devices=list(comp.devices),
                per_device=dict.fromkeys(comp.devices), unavailable_reason=comp.reason,
            )
        per_device = {k: window.per_device.get(k) for k in comp.devices}
        missing = [k for k, v in per_device.items() if v is None]
        joules = None if missing or not per_device else float(sum(v for v in per_device.values() if v is not None))
        reason = None
        if joules is None:
            reason = window.unavailable_reason or f"not measured: {', '.join(missing) or 'no devices'}"
        polled = window.polled_per_device
        return ComponentEnergy(
            source=comp.source,
            joules=joules,
            devices=list(comp.devices),
            per_device=per_device,
            unavailable_reason=reason,
            polled_j=window.polled_total_j,
            polled_source=window.polled_source,
            duration_s=window.duration_s,
            polled_per_device=None if polled is None else {k: polled.get(k) for k in comp.devices},
        )

    @property
    def open_windows(self) -> list[str]:
        with self._lock:
            return list(self._windows)

    # ------------------------------------------------------------------ state and description
    def device_state(self) -> dict[str, dict[str, Any]]:
        """Per GPU: memory in use, temperature, SM clock, performance state (what an idle baseline records)."""
        devs = self.nvml_devices
        if devs is None or not devs.is_open:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for i in devs.indices:
            try:
                out[devs.label(i)] = asdict(devs.state(i))
            except DeviceReadError as exc:
                out[devs.label(i)] = {"unavailable_reason": exc.reason}
        return out

    def describe(self) -> dict[str, Any]:
        """What this monitor measures, for the result file."""
        return {
            "source": self.source,
            "scope": self.scope,
            "update_periods_s": dict(self.update_periods_s),
            "polled_source": self.polled_source,
            "resolution_s": self.resolution_s,
            "baseline_key": self.baseline_key,
        }

    def close(self) -> None:
        """Stop the meters' threads and release NVML; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._plan.close()

    def __enter__(self) -> EnergyMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_unmeasured_component(window: MonitorWindow, name: str, devices: list[str], reason: str) -> MonitorWindow:
    """`window` with `name` brought into scope as not measured, so its total becomes null with `reason`.

    For a device found to be in use only after the window (an engine running on a GPU
    the monitor could not see): a total over the other components would pass for the job's.
    """
    added = ComponentEnergy(
        source="none", joules=None, devices=list(devices), per_device=dict.fromkeys(devices), unavailable_reason=reason
    )
    components = {name: added, **{k: v for k, v in window.components.items() if k != name}}
    excluded = {k: v for k, v in window.excluded.items() if k != name}
    total, why = _total(components, excluded)
    return replace(window, components=components, excluded=excluded, total_j=total, unavailable_reason=why)


def _total(components: dict[str, ComponentEnergy], excluded: Mapping[str, str]) -> tuple[float | None, str | None]:
    if not components:
        detail = "; ".join(f"{k}: {v}" for k, v in excluded.items())
        return None, f"nothing measured ({detail})" if detail else "nothing measured"
    missing = {k: c.unavailable_reason or "not measured" for k, c in components.items() if c.joules is None}
    if missing:
        return None, "; ".join(f"{k}: {v}" for k, v in missing.items())
    return float(sum(c.joules for c in components.values() if c.joules is not None)), None


# ---------------------------------------------------------------------- opening
def open_monitor(
    source: str,
    gpu_devices: list[int] | None,
    *,
    include_host: bool = True,
    interval_s: float = 0.1,
    nvml_module: Any = None,
    rapl_root: str | Path = DEFAULT_ROOT,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    start_threads: bool = True,
    measure_update_period: bool = True,
) -> EnergyMonitor:
    """Open the devices a job's energy covers and build its monitor (the caller must `close()` it).

    `gpu_devices` are the CUDA indices the job uses; None or [] is a CPU job.
    `auto` measures a GPU job's GPUs with the NVML counter cross-checked by
    polled power (polled power alone where there is no counter), a CPU job's
    CPU packages, and, where readable, CPU package and DRAM beside the GPUs
    when `include_host`. `nvml`, `nvml_polling` and `rapl` make their component
    required and raise DeviceUnavailable when it cannot be measured; `none`
    measures nothing. Whatever cannot be measured is null with a reason.
    `interval_s` is the power polling period; `measure_update_period` times
    the GPU counter's update period (once per GPU per process).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown energy source {source!r} (expected one of {', '.join(SOURCES)})")
    gpus = list(dict.fromkeys(gpu_devices or []))
    plan = _Plan()
    try:
        if source == "none":
            reason = "energy measurement disabled (energy.source = none)"
            plan.excluded.update({GPU: reason, CPU: reason, DRAM: reason})
        else:
            _plan_gpu(plan, source, gpus, nvml_module, environ, clock, interval_s, start_threads, measure_update_period)
            _plan_host(plan, source, bool(gpus), include_host, rapl_root, clock, start_threads)
    except BaseException:
        plan.close()
        raise
    return EnergyMonitor(plan, clock=clock)


def _plan_gpu(
    plan: _Plan,
    source: str,
    gpus: list[int],
    nvml_module: Any,
    environ: Mapping[str, str] | None,
    clock: Callable[[], float],
    interval_s: float,
    start_threads: bool,
    measure_update_period: bool,
) -> None:
    if not gpus:
        if source in ("nvml", "nvml_polling"):
            raise DeviceUnavailable(f"energy.source = {source} measures GPUs, but the job uses no GPU")
        plan.excluded[GPU] = NO_GPU_REASON
        return
    if source == "rapl":
        plan.excluded[GPU] = "energy.source = rapl measures CPU package and DRAM only"
        return
    required = source != "auto"
    labels = [NvmlDevices.label(i) for i in gpus]
    plan.gpu_indices = list(gpus)
    try:
        plan.nvml = NvmlDevices.open(gpus, nvml=nvml_module, environ=environ, clock=clock)
    except DeviceUnavailable as exc:
        if required:
            raise
        plan.components[GPU] = _Component(GPU, "nvml", labels, reason=exc.reason)
        return
    except DeviceLost as exc:
        if required:
            raise DeviceUnavailable(str(exc)) from exc
        plan.components[GPU] = _Component(GPU, "nvml", labels, reason=str(exc))
        return
    try:
        plan.components[GPU] = _gpu_component(
            plan, source, clock, interval_s, start_threads, measure_update_period
        )
    except DeviceReadError as exc:
        if required:
            raise DeviceUnavailable(str(exc)) from exc
        plan.components[GPU] = _Component(GPU, "nvml", labels, reason=str(exc))


def _gpu_component(
    plan: _Plan,
    source: str,
    clock: Callable[[], float],
    interval_s: float,
    start_threads: bool,
    measure_update_period: bool,
) -> _Component:
    devs = plan.nvml
    assert devs is not None
    labels = devs.labels()
    counter_problem = "energy.source = nvml_polling" if source == "nvml_polling" else _counter_problem(devs)
    power_problem = _power_problem(devs)
    if source == "nvml" and counter_problem:
        raise DeviceUnavailable(f"{counter_problem}; use energy.source=nvml_polling")
    if source == "nvml_polling" and power_problem:
        raise DeviceUnavailable(power_problem)
    if counter_problem is None:
        periods: dict[int, float | None] = {}
        for i in devs.indices:
            periods[i] = _update_period(devs, i) if measure_update_period else None
        plan.update_periods_s = {devs.label(i): p for i, p in periods.items()}
        counter = NvmlCounterMeter(devs, clock=clock, update_periods_s=periods)
        if power_problem is None:
            polling = NvmlPollingMeter(devs, interval_s, clock=clock, start_thread=start_threads)
            meter: EnergyMeter = CrossCheckedMeter(counter, polling)
        else:
            meter = counter
        plan.meters.append(meter)
        return _Component(GPU, "nvml", labels, meter=meter)
    if power_problem is None:
        meter = NvmlPollingMeter(devs, interval_s, clock=clock, start_thread=start_threads)
        plan.meters.append(meter)
        return _Component(GPU, "nvml_polling", labels, meter=meter)
    return _Component(GPU, "nvml", labels, reason=f"{counter_problem}; {power_problem}")


def _update_period(devs: NvmlDevices, i: int) -> float | None:
    try:
        return devs.cached_counter_update_period_s(i, UPDATE_PERIOD_CHANGES, UPDATE_PERIOD_TIMEOUT_S)
    except DeviceLost:
        raise
    except DeviceReadError:
        return None


def _counter_problem(devs: NvmlDevices) -> str | None:
    bad = [devs.label(i) for i in devs.indices if not devs.supports_energy_counter(i)]
    if bad:
        return f"energy counter not supported on {', '.join(bad)} (needs Volta or newer)"
    return None


def _power_problem(devs: NvmlDevices) -> str | None:
    problems = []
    for i in devs.indices:
        try:
            devs.polled_power_mw(i)
        except DeviceLost:
            raise
        except DeviceReadError as exc:
            problems.append(f"{devs.label(i)}: {exc.reason}")
    if problems:
        return "power reading unavailable (" + "; ".join(problems) + ")"
    return None


def _plan_host(
    plan: _Plan,
    source: str,
    gpu_job: bool,
    include_host: bool,
    rapl_root: str | Path,
    clock: Callable[[], float],
    start_threads: bool,
) -> None:
    if gpu_job and source != "rapl" and not include_host:
        reason = "energy.include_host is false"
        plan.excluded.update({CPU: reason, DRAM: reason})
        return
    try:
        domains = RaplDomains(rapl_root)
    except DeviceUnavailable as exc:
        if source == "rapl":
            raise
        if gpu_job:  # the host is measured beside the GPUs where it can be
            plan.excluded.update({CPU: exc.reason, DRAM: exc.reason})
        else:  # the CPU is what a CPU job runs on: in scope, unmeasured
            plan.components[CPU] = _Component(CPU, "rapl", [], reason=exc.reason)
            plan.excluded[DRAM] = exc.reason
        return
    plan.rapl = domains
    meter = RaplMeter(domains, clock=clock, wrap_guard_s=RAPL_WRAP_GUARD_S if start_threads else None)
    plan.meters.append(meter)
    plan.components[CPU] = _Component(CPU, "rapl", domains.keys(PACKAGE), meter=meter)
    if domains.keys(DRAM):
        plan.components[DRAM] = _Component(DRAM, "rapl", domains.keys(DRAM), meter=meter)
    else:
        plan.excluded[DRAM] = domains.missing.get(DRAM, "no DRAM RAPL domain")
