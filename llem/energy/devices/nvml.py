"""NVML access for energy, power and telemetry of NVIDIA GPUs.

Every NVML call in llem goes through `NvmlDevices`, which takes the NVML module
as an argument so tests can inject a scripted fake. Device indices here are CUDA
indices (what the user writes in `energy.devices`); NVML numbers GPUs in PCI
order and ignores CUDA_VISIBLE_DEVICES, so the two are mapped through UUIDs.

Two power readings exist: `nvmlDeviceGetPowerUsage`, which on Ampere (except
GA100) and newer boards is a trailing ~1 s average, and the instant field
`NVML_FI_DEV_POWER_INSTANT`. Integrated power uses the instant field wherever
the device offers it (`polled_power_mw`) and says which it used (`power_source`).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from llem.energy.devices import (
    DeviceLost,
    DeviceReadError,
    DeviceUnavailable,
    ReadNoPermission,
    ReadNotSupported,
)

# Clock-event reason bits (stable across NVML versions); looked up on the module when present.
_THERMAL_BITS = ("SwThermalSlowdown", 0x20), ("HwThermalSlowdown", 0x40)
_POWER_BITS = ("SwPowerCap", 0x04), ("HwPowerBrakeSlowdown", 0x80)

# Field ids and value types of nvmlDeviceGetFieldValues (stable; looked up on the module when present).
_FI_DEV_POWER_INSTANT = 186
_VALUE_MEMBERS = (
    ("NVML_VALUE_TYPE_DOUBLE", 0, "dVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_INT", 1, "uiVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG", 2, "ulVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", 3, "ullVal"),
    ("NVML_VALUE_TYPE_SIGNED_LONG_LONG", 4, "sllVal"),
    ("NVML_VALUE_TYPE_SIGNED_INT", 5, "siVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_SHORT", 6, "usVal"),
)
_PSTATE_UNKNOWN = 32
_FROZEN_CLOCK_READS = 1000

# The energy counter's update period is a property of the board, so it is measured once per GPU
# (by UUID) per process.
_UPDATE_PERIODS: dict[str, float] = {}
_UPDATE_PERIODS_LOCK = threading.Lock()


def forget_counter_update_periods() -> None:
    """Drop the per-process cache of measured counter update periods."""
    with _UPDATE_PERIODS_LOCK:
        _UPDATE_PERIODS.clear()


@dataclass(frozen=True)
class MemoryInfo:
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class Clocks:
    sm_mhz: int | None
    mem_mhz: int | None


@dataclass(frozen=True)
class Utilization:
    gpu_pct: int | None
    memory_pct: int | None


@dataclass(frozen=True)
class ThrottleReasons:
    """Why clocks are held down right now; `raw` is NVML's bit mask."""

    raw: int
    thermal: bool
    power: bool


@dataclass(frozen=True)
class GpuState:
    """What a GPU was doing at one instant; recorded with an idle baseline to show it really was idle."""

    memory_used_bytes: int | None
    temperature_c: int | None
    sm_clock_mhz: int | None
    pstate: int | None  # 0 = P0 (maximum performance) ... 15; None where unreadable


def _text(value: Any) -> str:
    """Old pynvml releases return bytes, newer ones str."""
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlDevices:
    """Open NVML handles for a set of CUDA device indices."""

    def __init__(self, nvml: ModuleType | Any | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml_arg = nvml
        self._nvml: Any = None
        self._clock = clock
        self._handles: dict[int, Any] = {}
        self._nvml_index: dict[int, int] = {}
        self._uuids: dict[int, str] = {}
        self._power_sources: dict[int, str] = {}
        self._refused: dict[int, str] = {}
        self._open = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        indices: list[int] | None = None,
        *,
        nvml: ModuleType | Any | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> NvmlDevices:
        """Initialise NVML and pick devices; raises DeviceUnavailable with a reason.

        `clock` times the counter's update period (tests pass a fake clock).
        """
        self = cls(nvml, clock=clock)
        self._start(indices, os.environ if environ is None else environ)
        return self

    def _load_module(self) -> Any:
        if self._nvml_arg is not None:
            return self._nvml_arg
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a hard dependency
            raise DeviceUnavailable(f"nvidia-ml-py is not installed ({exc})") from exc
        return pynvml

    def _start(self, indices: list[int] | None, environ: Mapping[str, str]) -> None:
        nv = self._load_module()
        self._nvml = nv
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise DeviceUnavailable(self._init_reason(exc)) from exc
        except OSError as exc:
            raise DeviceUnavailable(f"NVML library could not be loaded ({exc})") from exc
        self._open = True
        try:
            self._pick(indices, environ)
        except DeviceUnavailable:
            self.close()
            raise
        except nv.NVMLError as exc:
            self.close()
            raise DeviceUnavailable(f"NVML failed while listing GPUs: {_text(exc)}") from exc

    def _init_reason(self, exc: Exception) -> str:
        nv = self._nvml
        if isinstance(exc, getattr(nv, "NVMLError_LibraryNotFound", ())):
            return "NVML library not found (no NVIDIA driver)"
        if isinstance(exc, getattr(nv, "NVMLError_DriverNotLoaded", ())):
            return "NVIDIA driver not loaded"
        if isinstance(exc, getattr(nv, "NVMLError_NoPermission", ())):
            return "no permission to initialise NVML"
        return f"NVML initialisation failed: {_safe_str(exc)}"

    def _pick(self, indices: list[int] | None, environ: Mapping[str, str]) -> None:
        nv = self._nvml
        count = int(nv.nvmlDeviceGetCount())
        if count == 0:
            raise DeviceUnavailable("no NVIDIA GPU visible")
        openable = self._openable(count)
        if not openable:
            raise DeviceUnavailable(f"none of the {count} GPU(s) NVML counts can be opened ({self._refused_text()})")
        uuids = [uuid for _, _, uuid in openable]
        visible = _visible_nvml_indices(environ.get("CUDA_VISIBLE_DEVICES"), uuids)
        refused = f"; NVML could not open {self._refused_text()}" if self._refused else ""
        if not visible:
            raise DeviceUnavailable(
                f"no NVIDIA GPU visible (CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r} "
                f"matches none of the {len(openable)} GPU(s) NVML can open{refused})"
            )
        wanted = list(range(len(visible))) if indices is None else list(indices)
        if not wanted:
            raise DeviceUnavailable("energy.devices is an empty list")
        for cuda_index in wanted:
            if not 0 <= cuda_index < len(visible):
                raise DeviceUnavailable(
                    f"GPU index {cuda_index} requested but only {len(visible)} GPU(s) are visible{refused}"
                )
        for cuda_index in dict.fromkeys(wanted):
            n, handle, uuid = openable[visible[cuda_index]]
            self._handles[cuda_index] = handle
            self._nvml_index[cuda_index] = n
            self._uuids[cuda_index] = uuid

    def _openable(self, count: int) -> list[tuple[int, Any, str]]:
        """(NVML index, handle, UUID) of every GPU NVML lets this process open, in NVML order.

        Under device cgroups (SLURM's ConstrainDevices) NVML counts every GPU of the node but
        refuses handles to the ones the job may not use; those are recorded in `refused` and
        left out, so the job's own GPUs are still found, by UUID.
        """
        nv = self._nvml
        out: list[tuple[int, Any, str]] = []
        for n in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(n)
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
            except nv.NVMLError as exc:
                self._refused[n] = self._refusal(exc)
                continue
            out.append((n, handle, uuid))
        return out

    def _refusal(self, exc: Exception) -> str:
        nv = self._nvml
        if isinstance(exc, getattr(nv, "NVMLError_NoPermission", ())):
            return "insufficient permissions"
        if isinstance(exc, getattr(nv, "NVMLError_GpuIsLost", ())):
            return "GPU is lost"
        return _safe_str(exc)

    def _refused_text(self) -> str:
        return ", ".join(f"NVML GPU {n}: {reason}" for n, reason in self._refused.items())

    @property
    def refused(self) -> dict[int, str]:
        """NVML indices of the GPUs NVML counted but would not open, with the reason."""
        return dict(self._refused)

    def close(self) -> None:
        """Release NVML; safe to call twice."""
        if not self._open:
            return
        self._open = False
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass

    def __enter__(self) -> NvmlDevices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._open

    # ------------------------------------------------------------------ naming
    @property
    def indices(self) -> list[int]:
        """CUDA indices of the opened devices, in the order asked for."""
        return list(self._handles)

    @staticmethod
    def label(i: int) -> str:
        """Key used in per-device results, e.g. 'gpu0'."""
        return f"gpu{i}"

    def labels(self) -> list[str]:
        return [self.label(i) for i in self._handles]

    def nvml_index(self, i: int) -> int:
        return self._nvml_index[i]

    def uuid(self, i: int) -> str:
        return self._uuids[i]

    # ------------------------------------------------------------------ readings
    def _handle(self, i: int) -> Any:
        if not self._open:
            raise RuntimeError("NvmlDevices is closed")
        try:
            return self._handles[i]
        except KeyError:
            raise KeyError(f"GPU {i} was not opened (opened: {self.indices})") from None

    def _call(self, i: int, what: str, fn: str, *args: Any) -> Any:
        """Call an NVML device function and translate its errors."""
        nv = self._nvml
        handle = self._handle(i)
        func = getattr(nv, fn, None)
        if func is None:
            raise ReadNotSupported(self.label(i), what, f"{fn} is missing from this nvidia-ml-py")
        try:
            return func(handle, *args)
        except nv.NVMLError as exc:
            raise self._wrap(i, what, exc) from exc

    def _wrap(self, i: int, what: str, exc: Exception) -> DeviceReadError:
        nv = self._nvml
        label = self.label(i)
        if isinstance(exc, getattr(nv, "NVMLError_GpuIsLost", ())):
            return DeviceLost(label, what, "GPU is lost (fell off the bus)")
        if isinstance(exc, (getattr(nv, "NVMLError_NotSupported", ()), getattr(nv, "NVMLError_FunctionNotFound", ()))):
            return ReadNotSupported(label, what, "not supported by this GPU or driver")
        if isinstance(exc, getattr(nv, "NVMLError_NoPermission", ())):
            return ReadNoPermission(label, what, "insufficient permissions")
        return DeviceReadError(label, what, _safe_str(exc))

    def _optional(self, i: int, what: str, fn: str, *args: Any) -> Any:
        """Telemetry read: None when it cannot be read, but a lost GPU still raises."""
        try:
            return self._call(i, what, fn, *args)
        except DeviceLost:
            raise
        except DeviceReadError:
            return None

    def energy_mj(self, i: int) -> int:
        """Energy counter in millijoules since driver load (Volta and newer); raises DeviceReadError."""
        return int(self._call(i, "energy counter", "nvmlDeviceGetTotalEnergyConsumption"))

    def supports_energy_counter(self, i: int) -> bool:
        try:
            self.energy_mj(i)
        except DeviceLost:
            raise
        except DeviceReadError:
            return False
        return True

    def counter_update_period_s(self, i: int, changes: int = 3, timeout_s: float = 2.0) -> float | None:
        """Measure how often the energy counter moves: read it in a tight loop and time its changes.

        The first change only aligns the timing with an update; the median of the
        next `changes` intervals is returned. None when the counter did not change
        that often within `timeout_s`; DeviceReadError when it cannot be read.
        """
        if changes < 1:
            raise ValueError("changes must be at least 1")
        clock = self._clock
        start = clock()
        last = self.energy_mj(i)
        stamps: list[float] = []
        reads = 0
        while len(stamps) < changes + 1:
            value = self.energy_mj(i)
            now = clock()
            reads += 1
            if value != last:
                stamps.append(now)
                last = value
            frozen = now == start and reads >= _FROZEN_CLOCK_READS  # a clock that never moves would spin forever
            if len(stamps) < changes + 1 and (now - start > timeout_s or frozen):
                return None
        return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))

    def cached_counter_update_period_s(self, i: int, changes: int = 3, timeout_s: float = 2.0) -> float | None:
        """`counter_update_period_s`, kept per GPU UUID for the rest of the process (it is a hardware property)."""
        uuid = self.uuid(i)
        with _UPDATE_PERIODS_LOCK:
            if uuid in _UPDATE_PERIODS:
                return _UPDATE_PERIODS[uuid]
        period = self.counter_update_period_s(i, changes, timeout_s)
        if period is not None:  # a counter that did not move is tried again next time
            with _UPDATE_PERIODS_LOCK:
                _UPDATE_PERIODS[uuid] = period
        return period

    def power_mw(self, i: int) -> int:
        """`nvmlDeviceGetPowerUsage` in milliwatts (a ~1 s trailing average on Ampere and newer); raises DeviceReadError."""
        return int(self._call(i, "power", "nvmlDeviceGetPowerUsage"))

    def instant_power_mw(self, i: int) -> int:
        """Instant board power in milliwatts (field NVML_FI_DEV_POWER_INSTANT); raises DeviceReadError.

        The call can succeed while the field itself fails, so each value's own
        `nvmlReturn` is checked, and the union is read by its `valueType`.
        """
        nv = self._nvml
        field_id = int(getattr(nv, "NVML_FI_DEV_POWER_INSTANT", _FI_DEV_POWER_INSTANT))
        values = self._call(i, "instant power", "nvmlDeviceGetFieldValues", [field_id])
        value = values[0]
        ret = int(value.nvmlReturn)
        if ret != int(getattr(nv, "NVML_SUCCESS", 0)):
            raise self._wrap(i, "instant power", nv.NVMLError(ret))
        return int(round(self._field_number(i, value)))

    def _field_number(self, i: int, value: Any) -> float:
        kind = int(value.valueType)
        for name, default, member in _VALUE_MEMBERS:
            if kind == int(getattr(self._nvml, name, default)):
                return float(getattr(value.value, member))
        raise DeviceReadError(self.label(i), "instant power", f"unknown NVML value type {kind}")

    def power_source(self, i: int) -> str:
        """'instant' where the instant power field reads, else 'average'; probed once per device."""
        if i not in self._power_sources:
            try:
                self.instant_power_mw(i)
            except DeviceLost:
                raise
            except DeviceReadError:
                self._power_sources[i] = "average"
            else:
                self._power_sources[i] = "instant"
        return self._power_sources[i]

    def polled_power_mw(self, i: int) -> int:
        """Power for integration: instant where supported, the averaged reading elsewhere (see power_source)."""
        if self.power_source(i) == "instant":
            return self.instant_power_mw(i)
        return self.power_mw(i)

    def temperature_c(self, i: int) -> int | None:
        sensor = getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0)
        value = self._optional(i, "temperature", "nvmlDeviceGetTemperature", sensor)
        return None if value is None else int(value)

    def clocks_mhz(self, i: int) -> Clocks:
        nv = self._nvml
        sm = self._optional(i, "SM clock", "nvmlDeviceGetClockInfo", getattr(nv, "NVML_CLOCK_SM", 1))
        mem = self._optional(i, "memory clock", "nvmlDeviceGetClockInfo", getattr(nv, "NVML_CLOCK_MEM", 2))
        return Clocks(sm_mhz=None if sm is None else int(sm), mem_mhz=None if mem is None else int(mem))

    def utilization_pct(self, i: int) -> Utilization:
        util = self._optional(i, "utilization", "nvmlDeviceGetUtilizationRates")
        if util is None:
            return Utilization(None, None)
        return Utilization(gpu_pct=int(util.gpu), memory_pct=int(util.memory))

    def memory_bytes(self, i: int) -> MemoryInfo | None:
        info = self._optional(i, "memory", "nvmlDeviceGetMemoryInfo")
        if info is None:
            return None
        return MemoryInfo(total=int(info.total), used=int(info.used), free=int(info.free))

    def performance_state(self, i: int) -> int | None:
        """Performance state (0 = P0, the highest); None where unreadable."""
        value = self._optional(i, "performance state", "nvmlDeviceGetPerformanceState")
        if value is None or int(value) == _PSTATE_UNKNOWN:
            return None
        return int(value)

    def state(self, i: int) -> GpuState:
        """Memory in use, temperature, SM clock and performance state right now."""
        mem = self.memory_bytes(i)
        return GpuState(
            memory_used_bytes=None if mem is None else mem.used,
            temperature_c=self.temperature_c(i),
            sm_clock_mhz=self.clocks_mhz(i).sm_mhz,
            pstate=self.performance_state(i),
        )

    def persistence_mode(self, i: int) -> bool | None:
        value = self._optional(i, "persistence mode", "nvmlDeviceGetPersistenceMode")
        if value is None:
            return None
        return int(value) == int(getattr(self._nvml, "NVML_FEATURE_ENABLED", 1))

    def persistence_modes(self) -> dict[str, bool | None]:
        return {self.label(i): self.persistence_mode(i) for i in self._handles}

    def throttle_reasons(self, i: int) -> ThrottleReasons | None:
        """Clock-event reasons; the newer call first, the pre-12.4 name as a fallback."""
        raw = None
        for fn in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            try:
                raw = self._call(i, "clock event reasons", fn)
                break
            except ReadNotSupported:
                continue
            except DeviceLost:
                raise
            except DeviceReadError:
                return None
        if raw is None:
            return None
        raw = int(raw)
        return ThrottleReasons(
            raw=raw,
            thermal=bool(raw & self._mask(_THERMAL_BITS)),
            power=bool(raw & self._mask(_POWER_BITS)),
        )

    def _mask(self, bits: tuple[tuple[str, int], ...]) -> int:
        mask = 0
        for name, default in bits:
            mask |= int(getattr(self._nvml, f"nvmlClocksEventReason{name}", default))
        return mask

    def power_limit_w(self, i: int) -> float | None:
        value = self._optional(i, "power limit", "nvmlDeviceGetEnforcedPowerLimit")
        if value is None:
            value = self._optional(i, "power limit", "nvmlDeviceGetPowerManagementLimit")
        return None if value is None else int(value) / 1000.0

    def describe(self, i: int) -> dict[str, Any]:
        """Static facts recorded with each result, so numbers can be traced to hardware."""
        nv = self._nvml
        name = self._optional(i, "name", "nvmlDeviceGetName")
        mem = self.memory_bytes(i)
        return {
            "label": self.label(i),
            "cuda_index": i,
            "nvml_index": self._nvml_index[i],
            "name": None if name is None else _text(name),
            "uuid": self._uuids[i],
            "driver_version": self._system(nv, "nvmlSystemGetDriverVersion", _text),
            "cuda_driver_version": self._system(nv, "nvmlSystemGetCudaDriverVersion", _cuda_version),
            "memory_total_bytes": None if mem is None else mem.total,
            "power_limit_w": self.power_limit_w(i),
            "energy_counter": self.supports_energy_counter(i),
            "power_source": self.power_source(i),
            "persistence_mode": self.persistence_mode(i),
        }

    def describe_all(self) -> dict[str, dict[str, Any]]:
        return {self.label(i): self.describe(i) for i in self._handles}

    @staticmethod
    def _system(nv: Any, fn: str, convert: Any) -> Any:
        func = getattr(nv, fn, None)
        if func is None:
            return None
        try:
            return convert(func())
        except nv.NVMLError:
            return None


def visible_gpu_count(*, nvml_module: ModuleType | Any | None = None, environ: Mapping[str, str] | None = None) -> int:
    """NVIDIA GPUs this process can use (after CUDA_VISIBLE_DEVICES); 0 where NVML cannot be used.

    MIG instances count as GPUs the job uses, although NVML cannot measure their energy:
    the energy monitor then reports the GPU component unavailable with that reason.
    """
    env = os.environ if environ is None else environ
    try:
        devices = NvmlDevices.open(None, nvml=nvml_module, environ=env)
    except (DeviceUnavailable, DeviceReadError):
        tokens = []
        for token in (t.strip() for t in (env.get("CUDA_VISIBLE_DEVICES") or "").split(",")):
            if not token:
                break
            tokens.append(token)
        return len(tokens) if tokens and any(t.startswith("MIG-") for t in tokens) else 0
    try:
        return len(devices.indices)
    finally:
        devices.close()


def _cuda_version(value: Any) -> str:
    """NVML encodes CUDA 12.4 as 12040."""
    v = int(value)
    return f"{v // 1000}.{(v % 1000) // 10}"


def _safe_str(exc: Exception) -> str:
    """str() of a real NVMLError calls into the library, which may itself be missing."""
    try:
        return str(exc) or type(exc).__name__
    except Exception:  # noqa: BLE001
        return type(exc).__name__


def _visible_nvml_indices(cuda_visible: str | None, uuids: list[str]) -> list[int]:
    """Positions in `uuids` (the GPUs NVML can open, in NVML order) in CUDA order, honouring CUDA_VISIBLE_DEVICES.

    CUDA accepts integers and (prefixes of) UUIDs and stops at the first entry it
    cannot resolve; integers are taken as PCI order (NVML's order) among the GPUs
    this process can open (CUDA, like NVML, cannot use a GPU the device cgroup
    hides), which matches CUDA's default order on machines with identical GPUs.
    """
    if cuda_visible is None:
        return list(range(len(uuids)))
    picked: list[int] = []
    for token in (t.strip() for t in cuda_visible.split(",")):
        if not token:
            break
        if token.startswith("MIG-"):
            raise DeviceUnavailable(
                f"CUDA_VISIBLE_DEVICES names a MIG instance ({token}); NVML has no per-instance energy counter"
            )
        n: int | None = None
        if token.lstrip("-").isdigit():
            n = int(token)
            if not 0 <= n < len(uuids):
                break
        else:
            want = token if token.startswith("GPU-") else f"GPU-{token}"
            matches = [k for k, u in enumerate(uuids) if u.startswith(want)]
            if len(matches) != 1:
                break
            n = matches[0]
        if n in picked:
            break
        picked.append(n)
    return picked
