"""The window API every energy source implements.

A meter measures named windows (`begin_window` / `end_window`) that may nest or
overlap, so one meter can cover a baseline, the whole run and each batch. A
figure that could not be measured is None with a reason, never 0.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llem.energy.devices.nvml import NvmlDevices


@dataclass
class EnergyWindow:
    """Energy over one named window; per_device keys look like 'gpu0', 'package-0' or 'dram-0'."""

    source: str
    duration_s: float
    total_j: float | None
    per_device: dict[str, float | None]
    samples: int
    unavailable_reason: str | None = None
    resolution_s: float | None = None
    name: str = ""
    # Filled when a counter meter is cross-checked against integrated power.
    polled_total_j: float | None = None
    polled_per_device: dict[str, float | None] | None = None
    # Which NVML power reading was integrated: "instant", "average" or "mixed"; None when no power was polled.
    polled_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def total_of(per_device: dict[str, float | None], reasons: dict[str, str]) -> tuple[float | None, str | None]:
    """Sum the devices, or None (with the reasons) when any device is missing."""
    missing = [k for k, v in per_device.items() if v is None]
    if not per_device:
        return None, "no devices measured"
    if missing:
        detail = "; ".join(f"{k}: {reasons.get(k, 'not measured')}" for k in missing)
        return None, detail
    return float(sum(v for v in per_device.values() if v is not None)), None


class EnergyMeter(ABC):
    """Begin/end windows over one energy source."""

    source: str = "none"
    resolution_s: float | None = None

    def __init__(self) -> None:
        self._windows: dict[str, Any] = {}
        self._windows_lock = threading.Lock()

    def begin_window(self, name: str) -> None:
        with self._windows_lock:
            if name in self._windows:
                raise ValueError(f"energy window {name!r} is already open")
            self._windows[name] = None  # reserve the name before touching hardware
        try:
            state = self._begin(name)
        except BaseException:
            with self._windows_lock:
                self._windows.pop(name, None)
            raise
        with self._windows_lock:
            self._windows[name] = state

    def end_window(self, name: str) -> EnergyWindow:
        with self._windows_lock:
            if name not in self._windows:
                raise KeyError(f"no open energy window named {name!r}")
            state = self._windows.pop(name)
        window = self._end(name, state)
        window.name = name
        return window

    @property
    def open_windows(self) -> list[str]:
        with self._windows_lock:
            return list(self._windows)

    @property
    def nvml_devices(self) -> NvmlDevices | None:
        """The NVML devices behind this meter, for telemetry and descriptions (None off NVML)."""
        return None

    @abstractmethod
    def _begin(self, name: str) -> Any: ...

    @abstractmethod
    def _end(self, name: str, state: Any) -> EnergyWindow: ...

    def close(self) -> None:
        """Stop background threads and release devices the meter owns."""

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
