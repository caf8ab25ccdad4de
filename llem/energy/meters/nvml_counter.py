"""GPU energy from NVML's hardware counter (Volta and newer): the most accurate source."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from llem.energy.devices import DeviceReadError
from llem.energy.devices.nvml import NvmlDevices
from llem.energy.meters.base import EnergyMeter, EnergyWindow, total_of

# The counter updates every ~20-100 ms depending on the board; the slow end stands in where it was not measured.
COUNTER_RESOLUTION_S = 0.1


@dataclass
class _Reading:
    t: float
    mj: dict[int, int | None]
    errors: dict[int, str]


class NvmlCounterMeter(EnergyMeter):
    """Per-device difference of nvmlDeviceGetTotalEnergyConsumption (mJ -> J).

    `update_periods_s` are the counter update periods measured per CUDA index;
    the meter's resolution is the slowest of them (COUNTER_RESOLUTION_S where
    a period is unknown).
    """

    source = "nvml"
    resolution_s = COUNTER_RESOLUTION_S

    def __init__(
        self,
        devices: NvmlDevices,
        *,
        clock: Callable[[], float] = time.monotonic,
        owns_devices: bool = False,
        update_periods_s: Mapping[int, float | None] | None = None,
    ) -> None:
        super().__init__()
        self._devices = devices
        self._clock = clock
        self._owns = owns_devices
        periods = dict(update_periods_s or {})
        self.update_periods_s: dict[int, float | None] = {i: periods.get(i) for i in devices.indices}
        self.resolution_s = max(
            (COUNTER_RESOLUTION_S if p is None else p for p in self.update_periods_s.values()),
            default=COUNTER_RESOLUTION_S,
        )

    @property
    def nvml_devices(self) -> NvmlDevices:
        return self._devices

    def _read(self) -> _Reading:
        mj: dict[int, int | None] = {}
        errors: dict[int, str] = {}
        t = self._clock()
        for i in self._devices.indices:
            try:
                mj[i] = self._devices.energy_mj(i)
            except DeviceReadError as exc:
                mj[i] = None
                errors[i] = exc.reason
        return _Reading(t, mj, errors)

    def _begin(self, name: str) -> _Reading:
        return self._read()

    def _end(self, name: str, state: _Reading) -> EnergyWindow:
        end = self._read()
        per_device: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        for i in self._devices.indices:
            label = self._devices.label(i)
            a, b = state.mj.get(i), end.mj.get(i)
            if a is None or b is None:
                per_device[label] = None
                reasons[label] = state.errors.get(i) or end.errors.get(i) or "energy counter not read"
            elif b < a:
                per_device[label] = None
                reasons[label] = f"energy counter went backwards ({a} -> {b} mJ; driver reloaded?)"
            else:
                per_device[label] = (b - a) / 1000.0
        total, reason = total_of(per_device, reasons)
        return EnergyWindow(
            source=self.source,
            duration_s=end.t - state.t,
            total_j=total,
            per_device=per_device,
            samples=2,
            unavailable_reason=reason,
            resolution_s=self.resolution_s,
        )

    def close(self) -> None:
        if self._owns:
            self._devices.close()
