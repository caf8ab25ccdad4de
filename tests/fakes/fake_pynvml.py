"""A scripted stand-in for the `pynvml` module (nvidia-ml-py).

It mimics the slice of the real API that llem uses: function names and
signatures, the NVMLError class hierarchy (a subclass per error code, and
`NVMLError(code)` returning the matching subclass), opaque handles, and the
memory / utilisation structs, and the field-value structs of
`nvmlDeviceGetFieldValues` (real ctypes unions, so reading the wrong member gives
the wrong number as it would on a driver). Every reading is scripted per GPU as a
constant, a list of successive values (the last one repeats), or a function of a
fake clock, and any function can be told to raise (`nvmlDeviceGetHandleByIndex` on one GPU: a
GPU NVML counts but will not open, as under a device cgroup). The energy counter can be made
to move in steps like the real one (`energy_update_period_s`), and every device
call can be made to take fake time (`call_latency_s`). Power limits and locked clocks
can be read, checked against the GPU's constraints and supported clocks, set and reset
(refused with NoPermission unless `privileged`); every set and reset is recorded in
`settings_log`, and a `store` can share that state between processes.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------- constants
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1

NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6
NVML_PSTATE_0 = 0
NVML_PSTATE_UNKNOWN = 32

nvmlClocksEventReasonGpuIdle = 0x01
nvmlClocksEventReasonApplicationsClocksSetting = 0x02
nvmlClocksEventReasonSwPowerCap = 0x04
nvmlClocksEventReasonHwSlowdown = 0x08
nvmlClocksEventReasonSyncBoost = 0x10
nvmlClocksEventReasonSwThermalSlowdown = 0x20
nvmlClocksEventReasonHwThermalSlowdown = 0x40
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x80
nvmlClocksEventReasonNone = 0x00
nvmlClocksThrottleReasonSwThermalSlowdown = 0x20
nvmlClocksThrottleReasonHwThermalSlowdown = 0x40
nvmlClocksThrottleReasonSwPowerCap = 0x04


# --------------------------------------------------------------------- errors
class NVMLError(Exception):
    """Like the real one: NVMLError(code) builds the subclass registered for that code."""

    _valClassMapping: dict[int, type[NVMLError]] = {}
    _strings = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }
    value: int

    def __new__(cls, value: int = NVML_ERROR_UNKNOWN) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, NVMLError)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int = NVML_ERROR_UNKNOWN) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        return self._strings.get(self.value, f"NVML Error with code {self.value}")


def _error_class(name: str, code: int) -> type[NVMLError]:
    def __new__(cls: type[NVMLError], *args: Any) -> NVMLError:
        return NVMLError.__new__(cls, code)

    def __init__(self: NVMLError, *args: Any) -> None:
        Exception.__init__(self, code)

    klass = type(name, (NVMLError,), {"__new__": __new__, "__init__": __init__})
    NVMLError._valClassMapping[code] = klass
    return klass


NVMLError_Uninitialized = _error_class("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _error_class("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _error_class("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _error_class("NVMLError_NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_NotFound = _error_class("NVMLError_NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_DriverNotLoaded = _error_class("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _error_class("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_FunctionNotFound = _error_class("NVMLError_FunctionNotFound", NVML_ERROR_FUNCTION_NOT_FOUND)
NVMLError_GpuIsLost = _error_class("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _error_class("NVMLError_Unknown", NVML_ERROR_UNKNOWN)


# --------------------------------------------------------------------- structs
@dataclass
class c_nvmlMemory_t:
    total: int
    free: int
    used: int


@dataclass
class c_nvmlProcessInfo_t:
    pid: int
    usedGpuMemory: int


@dataclass
class c_nvmlUtilization_t:
    gpu: int
    memory: int


class c_nvmlValue_t(ctypes.Union):
    _fields_ = [
        ("dVal", ctypes.c_double),
        ("uiVal", ctypes.c_uint),
        ("ulVal", ctypes.c_ulong),
        ("ullVal", ctypes.c_ulonglong),
        ("sllVal", ctypes.c_longlong),
        ("siVal", ctypes.c_int),
        ("usVal", ctypes.c_ushort),
    ]


class c_nvmlFieldValue_t(ctypes.Structure):
    _fields_ = [
        ("fieldId", ctypes.c_uint32),
        ("scopeId", ctypes.c_uint32),
        ("timestamp", ctypes.c_int64),
        ("latencyUsec", ctypes.c_int64),
        ("valueType", ctypes.c_uint),
        ("nvmlReturn", ctypes.c_uint),
        ("value", c_nvmlValue_t),
    ]


_VALUE_MEMBER = {
    NVML_VALUE_TYPE_DOUBLE: "dVal",
    NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


# --------------------------------------------------------------------- scripting
class FakeClock:
    """Manual monotonic clock; pass `clock` as a meter's clock and `clock.sleep` as its sleep."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt

    def sleep(self, dt: float) -> None:
        self.advance(dt)


Script = Any  # a constant, a sequence of successive values, or a callable of the clock time


class _Scripted:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls = 0

    def next(self, t: float) -> Any:
        s = self.script
        self.calls += 1
        if callable(s):
            return s(t)
        if isinstance(s, Sequence) and not isinstance(s, (str, bytes)):
            if not s:
                raise ValueError("empty script")
            return s[min(self.calls - 1, len(s) - 1)]
        return s


@dataclass
class FakeGpu:
    """One scripted GPU. Each field is a constant, a list of successive values, or f(t).

    A list advances only on calls that return a value: a call told to raise by
    `errors` does not consume an entry.

    `instant_power_mw` None means the board does not offer NVML_FI_DEV_POWER_INSTANT
    (its field value comes back with NVML_ERROR_NOT_SUPPORTED); `instant_power_return`
    scripts the per-value nvmlReturn of a supported field, `instant_value_type` the
    union member the driver fills. `energy_update_period_s` makes the counter hold
    its value between updates at multiples of that period of fake time.
    """

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = ""
    energy_mj: Script = 0
    energy_update_period_s: float | None = None
    power_mw: Script = 100_000
    instant_power_mw: Script | None = None
    instant_power_return: Script = NVML_SUCCESS
    instant_value_type: int = NVML_VALUE_TYPE_UNSIGNED_INT
    pstate: Script = NVML_PSTATE_0
    temperature_c: Script = 40
    sm_clock_mhz: Script = 1980
    mem_clock_mhz: Script = 2619
    util_gpu: Script = 0
    util_mem: Script = 0
    memory_total: int = 80 * 2**30
    memory_used: Script = 2**30
    # (pid, used bytes) of the compute processes NVML lists on this GPU.
    processes: list[tuple[int, int]] = field(default_factory=list)
    persistence: int = NVML_FEATURE_ENABLED
    clock_reasons: Script = 0
    power_limit_mw: int = 700_000
    # Settable state (power limit above, locked clocks below) and what the device allows.
    power_limit_min_mw: int = 100_000
    power_limit_max_mw: int = 700_000
    default_power_limit_mw: int = 700_000
    enforced_power_limit_mw: int | None = None  # the driver enforces this instead of the set limit (None: the same)
    supported_mem_clocks_mhz: list[int] = field(default_factory=lambda: [2619])
    supported_sm_clocks_mhz: list[int] = field(default_factory=lambda: list(range(1980, 344, -15)))
    sm_locked_mhz: tuple[int, int] | None = None
    mem_locked_mhz: tuple[int, int] | None = None
    # function name -> exception (class or instance), or a list of successive exceptions/None.
    errors: dict[str, Any] = field(default_factory=dict)
    _scripts: dict[str, _Scripted] = field(default_factory=dict, repr=False)

    def value(self, attr: str, t: float) -> Any:
        if attr not in self._scripts:
            self._scripts[attr] = _Scripted(getattr(self, attr))
        return self._scripts[attr].next(t)


class FakeHandle:
    """Opaque like the real c_nvmlDevice_t pointer."""

    def __init__(self, index: int, gpu: FakeGpu) -> None:
        self.index = index
        self.gpu = gpu

    def __repr__(self) -> str:
        return f"<FakeHandle {self.index}>"


class FakeNvml:
    """Use an instance in place of the `pynvml` module."""

    # Error classes and constants, reachable as attributes like on the module.
    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_InvalidArgument = NVMLError_InvalidArgument
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_Unknown = NVMLError_Unknown
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVML_CLOCK_MEM = NVML_CLOCK_MEM
    NVML_FEATURE_DISABLED = NVML_FEATURE_DISABLED
    NVML_FEATURE_ENABLED = NVML_FEATURE_ENABLED
    NVML_SUCCESS = NVML_SUCCESS
    NVML_FI_DEV_POWER_AVERAGE = NVML_FI_DEV_POWER_AVERAGE
    NVML_FI_DEV_POWER_INSTANT = NVML_FI_DEV_POWER_INSTANT
    NVML_VALUE_TYPE_DOUBLE = NVML_VALUE_TYPE_DOUBLE
    NVML_VALUE_TYPE_UNSIGNED_INT = NVML_VALUE_TYPE_UNSIGNED_INT
    NVML_VALUE_TYPE_UNSIGNED_LONG = NVML_VALUE_TYPE_UNSIGNED_LONG
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    NVML_VALUE_TYPE_SIGNED_LONG_LONG = NVML_VALUE_TYPE_SIGNED_LONG_LONG
    NVML_VALUE_TYPE_SIGNED_INT = NVML_VALUE_TYPE_SIGNED_INT
    NVML_VALUE_TYPE_UNSIGNED_SHORT = NVML_VALUE_TYPE_UNSIGNED_SHORT
    NVML_PSTATE_UNKNOWN = NVML_PSTATE_UNKNOWN
    nvmlClocksEventReasonSwPowerCap = nvmlClocksEventReasonSwPowerCap
    nvmlClocksEventReasonSwThermalSlowdown = nvmlClocksEventReasonSwThermalSlowdown
    nvmlClocksEventReasonHwThermalSlowdown = nvmlClocksEventReasonHwThermalSlowdown
    nvmlClocksEventReasonHwPowerBrakeSlowdown = nvmlClocksEventReasonHwPowerBrakeSlowdown

    def __init__(
        self,
        gpus: Sequence[FakeGpu] = (),
        *,
        clock: Callable[[], float] | None = None,
        init_error: type[NVMLError] | NVMLError | None = None,
        driver_version: str = "550.54.15",
        cuda_driver_version: int = 12040,
        has_event_reasons: bool = True,
        call_latency_s: float = 0.0,
        privileged: bool = True,
        store: Any = None,
    ) -> None:
        self.gpus = list(gpus)
        for n, g in enumerate(self.gpus):
            if not g.uuid:
                g.uuid = f"GPU-{n:08d}-fake-0000-0000-000000000000"
        self.clock = clock or FakeClock()
        self.init_error = init_error
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.has_event_reasons = has_event_reasons
        self.call_latency_s = call_latency_s  # fake time each device call takes (needs a FakeClock)
        self.initialised = 0
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: list[tuple[str, int | None]] = []
        # Setting power limits and clocks: refused with NoPermission unless privileged; every set and reset is
        # logged (function, GPU UUID, arguments). A `store` (see gpu_settings_store.py) keeps the settable
        # state and the log in a file, so processes that each build their own fake see one GPU.
        self.privileged = privileged
        self.store = store
        self.settings_log: list[tuple[str, str, tuple[int, ...]]] = []

    # ----------------------------------------------------------------- helpers
    def _check(self, fn: str, handle: FakeHandle | None = None) -> None:
        self.calls.append((fn, None if handle is None else handle.index))
        if not self.initialised:
            raise NVMLError_Uninitialized()
        if handle is None:
            return
        if self.call_latency_s:
            self.clock.advance(self.call_latency_s)  # type: ignore[attr-defined]
        err = handle.gpu.errors.get(fn)
        if isinstance(err, list):
            k = sum(1 for name, idx in self.calls if name == fn and idx == handle.index) - 1
            err = err[min(k, len(err) - 1)] if err else None
        if err is None:
            return
        raise err() if isinstance(err, type) else err

    def _v(self, handle: FakeHandle, attr: str) -> Any:
        return handle.gpu.value(attr, self.clock())

    # ----------------------------------------------------------------- lifecycle
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            err = self.init_error
            raise err() if isinstance(err, type) else err
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.calls.append(("nvmlShutdown", None))
        if not self.initialised:
            raise NVMLError_Uninitialized()
        self.initialised -= 1
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        """A GPU whose `errors` name this function is counted but refused, as under a device cgroup."""
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        handle = FakeHandle(index, self.gpus[index])
        if "nvmlDeviceGetHandleByIndex" in handle.gpu.errors:
            self.calls.pop()
            self._check("nvmlDeviceGetHandleByIndex", handle)
        return handle

    # ----------------------------------------------------------------- per device
    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        self._check("nvmlDeviceGetUUID", handle)
        return handle.gpu.uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        self._check("nvmlDeviceGetName", handle)
        return handle.gpu.name

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetIndex", handle)
        return handle.index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetTotalEnergyConsumption", handle)
        t = self.clock()
        step = handle.gpu.energy_update_period_s
        if step:
            t = math.floor(t / step + 1e-9) * step  # the value of the last update
        return int(handle.gpu.value("energy_mj", t))

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, fieldIds: Sequence[Any]) -> list[c_nvmlFieldValue_t]:
        self._check("nvmlDeviceGetFieldValues", handle)
        out = []
        for item in fieldIds:
            field_id, scope = (item, 0) if isinstance(item, int) else item
            v = c_nvmlFieldValue_t(fieldId=field_id, scopeId=scope, timestamp=int(self.clock() * 1e6))
            v.nvmlReturn = NVML_ERROR_NOT_SUPPORTED
            gpu = handle.gpu
            if field_id == NVML_FI_DEV_POWER_INSTANT and gpu.instant_power_mw is not None:
                ret = int(gpu.value("instant_power_return", self.clock()))
                v.nvmlReturn = ret
                if ret == NVML_SUCCESS:
                    self._set_value(v, gpu.instant_value_type, gpu.value("instant_power_mw", self.clock()))
            elif field_id == NVML_FI_DEV_POWER_AVERAGE:
                v.nvmlReturn = NVML_SUCCESS
                self._set_value(v, NVML_VALUE_TYPE_UNSIGNED_INT, self._v(handle, "power_mw"))
            out.append(v)
        return out

    @staticmethod
    def _set_value(v: c_nvmlFieldValue_t, value_type: int, number: Any) -> None:
        v.valueType = value_type
        member = _VALUE_MEMBER[value_type]
        setattr(v.value, member, float(number) if value_type == NVML_VALUE_TYPE_DOUBLE else int(number))

    def nvmlDeviceGetPerformanceState(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetPerformanceState", handle)
        return int(self._v(handle, "pstate"))

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetPowerUsage", handle)
        return int(self._v(handle, "power_mw"))

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        self._check("nvmlDeviceGetTemperature", handle)
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError_InvalidArgument()
        return int(self._v(handle, "temperature_c"))

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, type: int) -> int:
        self._check("nvmlDeviceGetClockInfo", handle)
        if type in (NVML_CLOCK_SM, NVML_CLOCK_MEM):
            self._load_settings(handle.gpu)
        locked = handle.gpu.sm_locked_mhz if type == NVML_CLOCK_SM else handle.gpu.mem_locked_mhz
        if type == NVML_CLOCK_SM:
            value = int(self._v(handle, "sm_clock_mhz"))
            return value if locked is None else min(max(value, locked[0]), locked[1])  # a lock holds the clock in range
        if type == NVML_CLOCK_MEM:
            value = int(self._v(handle, "mem_clock_mhz"))
            return value if locked is None else min(max(value, locked[0]), locked[1])
        raise NVMLError_InvalidArgument()

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> c_nvmlUtilization_t:
        self._check("nvmlDeviceGetUtilizationRates", handle)
        return c_nvmlUtilization_t(gpu=int(self._v(handle, "util_gpu")), memory=int(self._v(handle, "util_mem")))

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> c_nvmlMemory_t:
        self._check("nvmlDeviceGetMemoryInfo", handle)
        used = int(self._v(handle, "memory_used"))
        total = handle.gpu.memory_total
        return c_nvmlMemory_t(total=total, free=total - used, used=used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[c_nvmlProcessInfo_t]:
        self._check("nvmlDeviceGetComputeRunningProcesses", handle)
        return [c_nvmlProcessInfo_t(pid=pid, usedGpuMemory=used) for pid, used in handle.gpu.processes]

    def nvmlDeviceGetPersistenceMode(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetPersistenceMode", handle)
        return handle.gpu.persistence

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetCurrentClocksEventReasons", handle)
        if not self.has_event_reasons:
            raise NVMLError_FunctionNotFound()
        return int(self._v(handle, "clock_reasons"))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return int(self._v(handle, "clock_reasons"))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetEnforcedPowerLimit", handle)
        self._load_settings(handle.gpu)
        enforced = handle.gpu.enforced_power_limit_mw
        return handle.gpu.power_limit_mw if enforced is None else enforced

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetPowerManagementLimit", handle)
        self._load_settings(handle.gpu)
        return handle.gpu.power_limit_mw

    # ----------------------------------------------------------------- settings (power limit, locked clocks)
    _SETTABLE = ("power_limit_mw", "sm_locked_mhz", "mem_locked_mhz")

    def _load_settings(self, gpu: FakeGpu) -> None:
        if self.store is not None:
            state = self.store.load(gpu.uuid)
            if state is not None:
                gpu.power_limit_mw = int(state["power_limit_mw"])
                for name in ("sm_locked_mhz", "mem_locked_mhz"):
                    setattr(gpu, name, None if state[name] is None else tuple(state[name]))

    def _save_settings(self, gpu: FakeGpu, fn: str, args: tuple[int, ...]) -> None:
        self.settings_log.append((fn, gpu.uuid, args))
        if self.store is not None:
            self.store.save(gpu.uuid, {name: getattr(gpu, name) for name in self._SETTABLE})
            self.store.log(fn, gpu.uuid, args)

    def _check_set(self, fn: str, handle: FakeHandle) -> None:
        self._check(fn, handle)
        if not self.privileged:
            raise NVMLError_NoPermission()

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: FakeHandle) -> list[int]:
        self._check("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        return [handle.gpu.power_limit_min_mw, handle.gpu.power_limit_max_mw]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetPowerManagementDefaultLimit", handle)
        return handle.gpu.default_power_limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, handle: FakeHandle, limit: int) -> None:
        self._check_set("nvmlDeviceSetPowerManagementLimit", handle)
        gpu = handle.gpu
        if not gpu.power_limit_min_mw <= int(limit) <= gpu.power_limit_max_mw:
            raise NVMLError_InvalidArgument()
        self._load_settings(gpu)
        gpu.power_limit_mw = int(limit)
        self._save_settings(gpu, "nvmlDeviceSetPowerManagementLimit", (int(limit),))

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: FakeHandle) -> list[int]:
        self._check("nvmlDeviceGetSupportedMemoryClocks", handle)
        return list(handle.gpu.supported_mem_clocks_mhz)

    def nvmlDeviceGetSupportedGraphicsClocks(self, handle: FakeHandle, memoryClockMHz: int) -> list[int]:
        self._check("nvmlDeviceGetSupportedGraphicsClocks", handle)
        if int(memoryClockMHz) not in handle.gpu.supported_mem_clocks_mhz:
            raise NVMLError_NotFound()
        return list(handle.gpu.supported_sm_clocks_mhz)

    def _lock(self, fn: str, handle: FakeHandle, attr: str, low: int, high: int) -> None:
        self._check_set(fn, handle)
        if int(low) > int(high):
            raise NVMLError_InvalidArgument()
        gpu = handle.gpu
        self._load_settings(gpu)
        setattr(gpu, attr, (int(low), int(high)))
        self._save_settings(gpu, fn, (int(low), int(high)))

    def _unlock(self, fn: str, handle: FakeHandle, attr: str) -> None:
        self._check_set(fn, handle)
        gpu = handle.gpu
        self._load_settings(gpu)
        setattr(gpu, attr, None)
        self._save_settings(gpu, fn, ())

    def nvmlDeviceSetGpuLockedClocks(self, handle: FakeHandle, minGpuClockMHz: int, maxGpuClockMHz: int) -> None:
        self._lock("nvmlDeviceSetGpuLockedClocks", handle, "sm_locked_mhz", minGpuClockMHz, maxGpuClockMHz)

    def nvmlDeviceResetGpuLockedClocks(self, handle: FakeHandle) -> None:
        self._unlock("nvmlDeviceResetGpuLockedClocks", handle, "sm_locked_mhz")

    def nvmlDeviceSetMemoryLockedClocks(self, handle: FakeHandle, minMemClockMHz: int, maxMemClockMHz: int) -> None:
        self._lock("nvmlDeviceSetMemoryLockedClocks", handle, "mem_locked_mhz", minMemClockMHz, maxMemClockMHz)

    def nvmlDeviceResetMemoryLockedClocks(self, handle: FakeHandle) -> None:
        self._unlock("nvmlDeviceResetMemoryLockedClocks", handle, "mem_locked_mhz")
