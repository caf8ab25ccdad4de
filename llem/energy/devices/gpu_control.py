"""Set, read back and reset a GPU's power limit and locked clocks through NVML, by GPU UUID.

Kept apart from `nvml.py` (which only reads) because these calls change the machine for every
later user of the GPU: callers record the original values first (`gpu_restore.py`) and restore
them after. Every NVML failure becomes a `GpuControlError` whose kind says what the user can do:
no permission (run as root), not supported by this GPU, or a value the device refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from llem.energy.devices import DeviceUnavailable

PRIVILEGE_FIX = (
    "setting GPU power limits and clocks needs root or CAP_SYS_ADMIN: run llem as root (e.g. `sudo -E python -m "
    "llem ...`), or leave gpu.* unset"
)


class GpuControlError(RuntimeError):
    """A set, read or reset of a GPU setting failed; `kind` is no_permission, not_supported, invalid or failed."""

    def __init__(self, uuid: str, what: str, kind: str, reason: str) -> None:
        super().__init__(f"GPU {uuid}: cannot {what}: {reason}")
        self.uuid, self.what, self.kind, self.reason = uuid, what, kind, reason


@dataclass(frozen=True)
class GpuLimits:
    """What a GPU allows: power limit range and default (W), supported clocks (MHz, ascending); None: unknown."""

    uuid: str
    name: str | None
    power_limit_range_w: tuple[float, float] | None
    default_power_limit_w: float | None
    mem_clocks_mhz: tuple[int, ...] | None
    sm_clocks_mhz: tuple[int, ...] | None  # at the highest memory clock


class GpuControl:
    """NVML opened once; every GPU on the node addressable by UUID (what restore records and placements use)."""

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        if nvml is None:
            try:
                import pynvml as nvml  # type: ignore[no-redef]
            except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a hard dependency
                raise DeviceUnavailable(f"nvidia-ml-py is not installed ({exc})") from exc
        self._nv: Any = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise DeviceUnavailable(f"NVML initialisation failed: {_text_error(exc)}") from exc
        except OSError as exc:
            raise DeviceUnavailable(f"NVML library could not be loaded ({exc})") from exc
        self._open = True
        self._handles: dict[str, Any] = {}
        try:
            for n in range(int(nvml.nvmlDeviceGetCount())):
                handle = nvml.nvmlDeviceGetHandleByIndex(n)
                self._handles[_text(nvml.nvmlDeviceGetUUID(handle))] = handle
        except nvml.NVMLError as exc:
            self.close()
            raise DeviceUnavailable(f"NVML failed while listing GPUs: {_text_error(exc)}") from exc

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self._nv.nvmlShutdown()
            except self._nv.NVMLError:
                pass

    def __enter__(self) -> GpuControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def uuids(self) -> list[str]:
        return list(self._handles)

    # ------------------------------------------------------------------ calls
    def _call(self, uuid: str, what: str, fn: str, *args: Any) -> Any:
        nv = self._nv
        handle = self._handles.get(uuid)
        if handle is None:
            raise GpuControlError(uuid, what, "failed", "no such GPU on this machine")
        func = getattr(nv, fn, None)
        if func is None:
            raise GpuControlError(uuid, what, "not_supported", f"{fn} is missing from this nvidia-ml-py")
        try:
            return func(handle, *args)
        except nv.NVMLError as exc:
            raise GpuControlError(uuid, what, self._kind(exc), _text_error(exc)) from exc

    def _kind(self, exc: Exception) -> str:
        nv = self._nv
        if isinstance(exc, getattr(nv, "NVMLError_NoPermission", ())):
            return "no_permission"
        if isinstance(exc, (getattr(nv, "NVMLError_NotSupported", ()), getattr(nv, "NVMLError_FunctionNotFound", ()))):
            return "not_supported"
        if isinstance(exc, getattr(nv, "NVMLError_InvalidArgument", ())):
            return "invalid"
        return "failed"

    def _maybe(self, uuid: str, what: str, fn: str, *args: Any) -> Any:
        try:
            return self._call(uuid, what, fn, *args)
        except GpuControlError:
            return None

    # ------------------------------------------------------------------ reading
    def limits(self, uuid: str) -> GpuLimits:
        """What the GPU allows; a part that cannot be read is None."""
        name = self._maybe(uuid, "read its name", "nvmlDeviceGetName")
        pair = self._maybe(uuid, "read its power limit constraints", "nvmlDeviceGetPowerManagementLimitConstraints")
        default = self._maybe(uuid, "read its default power limit", "nvmlDeviceGetPowerManagementDefaultLimit")
        mem = self._maybe(uuid, "read its supported memory clocks", "nvmlDeviceGetSupportedMemoryClocks")
        mem_sorted = tuple(sorted({int(c) for c in mem})) if mem else None
        sm = None
        if mem_sorted:
            sm = self.sm_clocks_at(uuid, mem_sorted[-1])
        return GpuLimits(
            uuid=uuid,
            name=None if name is None else _text(name),
            power_limit_range_w=None if not pair else (int(pair[0]) / 1000.0, int(pair[1]) / 1000.0),
            default_power_limit_w=None if default is None else int(default) / 1000.0,
            mem_clocks_mhz=mem_sorted,
            sm_clocks_mhz=sm,
        )

    def sm_clocks_at(self, uuid: str, mem_mhz: int) -> tuple[int, ...] | None:
        sm = self._maybe(uuid, "read its supported SM clocks", "nvmlDeviceGetSupportedGraphicsClocks", int(mem_mhz))
        return tuple(sorted({int(c) for c in sm})) if sm else None

    def power_limit_mw(self, uuid: str) -> int:
        """The power management limit now set (what a restore puts back)."""
        return int(self._call(uuid, "read its power limit", "nvmlDeviceGetPowerManagementLimit"))

    def enforced_power_limit_w(self, uuid: str) -> float | None:
        """The limit the driver actually enforces (it may differ from the one set)."""
        value = self._maybe(uuid, "read its enforced power limit", "nvmlDeviceGetEnforcedPowerLimit")
        return None if value is None else int(value) / 1000.0

    def clock_mhz(self, uuid: str, which: str) -> int | None:
        """The current SM (`sm`) or memory (`mem`) clock."""
        clock = getattr(self._nv, "NVML_CLOCK_SM" if which == "sm" else "NVML_CLOCK_MEM", 1 if which == "sm" else 2)
        value = self._maybe(uuid, f"read its {which} clock", "nvmlDeviceGetClockInfo", clock)
        return None if value is None else int(value)

    def permission_problem(self, uuid: str) -> str | None:
        """Why this process cannot change the GPU's settings, or None: re-sets the current limit, which is a no-op."""
        try:
            self.set_power_limit_mw(uuid, self.power_limit_mw(uuid))
        except GpuControlError as error:
            if error.kind == "no_permission":
                return f"no permission to change GPU settings ({error.reason}); {PRIVILEGE_FIX}"
            if error.kind == "not_supported":
                return None  # the power limit is not settable here; each knob is checked on its own
            return error.reason
        return None

    # ------------------------------------------------------------------ changing
    def set_power_limit_mw(self, uuid: str, milliwatts: int) -> None:
        self._call(uuid, "set its power limit", "nvmlDeviceSetPowerManagementLimit", int(milliwatts))

    def lock_clocks(self, uuid: str, which: str, low: int, high: int) -> None:
        fn = "nvmlDeviceSetGpuLockedClocks" if which == "sm" else "nvmlDeviceSetMemoryLockedClocks"
        self._call(uuid, f"lock its {which} clock", fn, int(low), int(high))

    def reset_clocks(self, uuid: str, which: str) -> None:
        fn = "nvmlDeviceResetGpuLockedClocks" if which == "sm" else "nvmlDeviceResetMemoryLockedClocks"
        self._call(uuid, f"reset its {which} clock", fn)


def nearest(value: int, supported: Sequence[int]) -> list[int]:
    """The supported value(s) closest to `value`: one, or the two on either side at the same distance."""
    if not supported:
        return []
    best = min(abs(s - value) for s in supported)
    return sorted({s for s in supported if abs(s - value) == best})


def neighbours(value: int, supported: Sequence[int]) -> list[int]:
    """The nearest supported value below and above `value` (one where it lies outside them)."""
    below = [s for s in supported if s < value]
    above = [s for s in supported if s > value]
    return [*([max(below)] if below else []), *([min(above)] if above else [])]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text_error(exc: Exception) -> str:
    try:
        return str(exc) or type(exc).__name__
    except Exception:  # noqa: BLE001 - str() of a real NVMLError calls into the library
        return type(exc).__name__
