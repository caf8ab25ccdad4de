"""Device layer: the only code that talks to NVML or RAPL sysfs.

Meters sit on top of this layer so they can be tested against scripted fakes,
and so every hardware failure is turned into one of the exceptions below
instead of a silent zero.
"""

from __future__ import annotations


class DeviceUnavailable(RuntimeError):
    """A whole energy source cannot be used; `reason` is shown to the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeviceReadError(RuntimeError):
    """One reading from one device failed."""

    def __init__(self, device: str, what: str, reason: str) -> None:
        super().__init__(f"{device}: cannot read {what}: {reason}")
        self.device = device
        self.what = what
        self.reason = reason


class ReadNotSupported(DeviceReadError):
    """The device or driver does not offer this reading (e.g. energy counter before Volta)."""


class ReadNoPermission(DeviceReadError):
    """The driver refused the reading for lack of privileges."""


class DeviceLost(DeviceReadError):
    """The GPU fell off the bus; every later figure from it is meaningless."""


from llem.energy.devices.nvml import (  # noqa: E402
    Clocks,
    GpuState,
    MemoryInfo,
    NvmlDevices,
    ThrottleReasons,
    Utilization,
    forget_counter_update_periods,
    visible_gpu_count,
)
from llem.energy.devices.rapl import RaplDomain, RaplDomains, delta_uj  # noqa: E402

__all__ = [
    "Clocks",
    "DeviceLost",
    "DeviceReadError",
    "DeviceUnavailable",
    "GpuState",
    "MemoryInfo",
    "NvmlDevices",
    "RaplDomain",
    "RaplDomains",
    "ReadNoPermission",
    "ReadNotSupported",
    "ThrottleReasons",
    "Utilization",
    "delta_uj",
    "forget_counter_update_periods",
    "visible_gpu_count",
]
