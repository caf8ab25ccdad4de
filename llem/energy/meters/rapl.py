"""CPU package and DRAM energy from RAPL, one entry per domain ('package-0', 'dram-0').

Package and DRAM are separate counters, so their energies add up. The sysfs counter wraps at `max_energy_range_uj` (minutes at high power), so
the meter keeps an unwrapped running total: it reads at every window edge and,
from a low-rate thread, often enough that at most one wrap happens between reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from llem.energy.devices import DeviceReadError
from llem.energy.devices.rapl import RaplDomains, delta_uj
from llem.energy.meters.base import EnergyMeter, EnergyWindow, total_of

# RAPL's counters update about every millisecond.
RAPL_RESOLUTION_S = 0.001


@dataclass
class _Snapshot:
    t: float
    acc_uj: dict[str, int | None]
    epoch: dict[str, int]


class RaplMeter(EnergyMeter):
    source = "rapl"
    resolution_s = RAPL_RESOLUTION_S

    def __init__(
        self,
        domains: RaplDomains,
        *,
        clock: Callable[[], float] = time.monotonic,
        wrap_guard_s: float | None = 30.0,
    ) -> None:
        super().__init__()
        self._domains = domains
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, int | None] = {d.key: None for d in domains.domains}
        self._acc: dict[str, int] = {d.key: 0 for d in domains.domains}
        # An epoch changes when a read fails: the running total is no longer continuous.
        self._epoch: dict[str, int] = {d.key: 0 for d in domains.domains}
        self._errors: dict[str, str] = {}
        self.refresh()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if wrap_guard_s is not None:
            self._thread = threading.Thread(target=self._run, args=(wrap_guard_s,), name="llem-rapl", daemon=True)
            self._thread.start()

    def refresh(self) -> _Snapshot:
        """Read every domain and fold the change into the unwrapped totals (the guard thread calls this)."""
        with self._lock:
            t = self._clock()
            for d in self._domains.domains:
                try:
                    now = self._domains.energy_uj(d)
                except DeviceReadError as exc:
                    self._errors[d.key] = exc.reason
                    if self._last[d.key] is not None:
                        self._epoch[d.key] += 1
                    self._last[d.key] = None
                    continue
                prev = self._last[d.key]
                if prev is not None:
                    try:
                        self._acc[d.key] += delta_uj(prev, now, d.max_energy_range_uj)
                    except ValueError as exc:  # went backwards with no known range: continuity lost
                        self._errors[d.key] = str(exc)
                        self._epoch[d.key] += 1
                self._last[d.key] = now
            acc = {k: (self._acc[k] if self._last[k] is not None else None) for k in self._acc}
            return _Snapshot(t, acc, dict(self._epoch))

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.refresh()

    def _begin(self, name: str) -> _Snapshot:
        return self.refresh()

    def _end(self, name: str, state: _Snapshot) -> EnergyWindow:
        end = self.refresh()
        per_device: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        for key in self._acc:
            a, b = state.acc_uj[key], end.acc_uj[key]
            if a is None or b is None or state.epoch[key] != end.epoch[key]:
                per_device[key] = None
                reasons[key] = self._errors.get(key, "RAPL counter not read")
            else:
                per_device[key] = (b - a) / 1e6
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
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
