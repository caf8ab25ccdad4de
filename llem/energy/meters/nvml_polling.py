"""GPU energy by integrating polled power: the cross-check of the counter, and the fallback without one.

A background thread reads board power every `interval_s` while any window is
open; each window also takes a reading at its begin and end so the trapezoid
covers the whole window, not just the span between the first and last poll.
Power is the instant reading where the device offers it; the averaged reading
(~1 s trailing on Ampere and newer) lags every change, so `polled_source` says
which was integrated.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from llem.energy.devices import DeviceReadError
from llem.energy.devices.nvml import NvmlDevices
from llem.energy.meters.base import EnergyMeter, EnergyWindow, total_of

Sample = tuple[float, tuple[float | None, ...]]  # (t, watts per device)


def trapezoid_j(points: list[tuple[float, float]]) -> float:
    """Energy in J from (t_s, watts) points sorted by time."""
    return sum((t1 - t0) * (p0 + p1) / 2.0 for (t0, p0), (t1, p1) in zip(points, points[1:]))


class NvmlPollingMeter(EnergyMeter):
    source = "nvml_polling"

    def __init__(
        self,
        devices: NvmlDevices,
        interval_s: float = 0.1,
        *,
        clock: Callable[[], float] = time.monotonic,
        owns_devices: bool = False,
        start_thread: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        super().__init__()
        self._devices = devices
        self._indices = devices.indices
        self.interval_s = interval_s
        self.resolution_s = interval_s
        self._clock = clock
        self._owns = owns_devices
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._dropped = 0  # absolute index of self._samples[0]
        self._starts: list[int] = []  # absolute begin indices of open windows
        self._last_error: dict[int, str] = {}
        self.power_sources: dict[str, str] = {devices.label(i): devices.power_source(i) for i in self._indices}
        kinds = set(self.power_sources.values())
        self.polled_source: str = kinds.pop() if len(kinds) == 1 else "mixed"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start_thread:
            self._thread = threading.Thread(target=self._run, name="llem-power-poll", daemon=True)
            self._thread.start()

    @property
    def nvml_devices(self) -> NvmlDevices:
        return self._devices

    # ------------------------------------------------------------------ sampling
    def _reading_locked(self) -> int:
        """Take one reading and return its absolute index; caller holds the lock."""
        watts: list[float | None] = []
        t = self._clock()
        for i in self._indices:
            try:
                watts.append(self._devices.polled_power_mw(i) / 1000.0)
            except DeviceReadError as exc:
                watts.append(None)
                self._last_error[i] = exc.reason
        self._samples.append((t, tuple(watts)))
        return self._dropped + len(self._samples) - 1

    def poll_once(self) -> bool:
        """Record one reading if a window is open (the thread calls this; tests call it directly)."""
        with self._lock:
            if not self._starts:
                return False
            self._reading_locked()
            return True

    def _run(self) -> None:
        next_t = time.monotonic()
        while True:
            next_t += self.interval_s
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (slow NVML call): do not burst to catch up
                next_t = time.monotonic()
                delay = 0.0
            if self._stop.wait(delay):
                return
            self.poll_once()

    # ------------------------------------------------------------------ windows
    def _begin(self, name: str) -> int:
        with self._lock:
            idx = self._reading_locked()
            self._starts.append(idx)
            return idx

    def _end(self, name: str, state: int) -> EnergyWindow:
        with self._lock:
            end_idx = self._reading_locked()
            window = self._samples[state - self._dropped : end_idx - self._dropped + 1]
            self._starts.remove(state)
            self._prune_locked()
        return self._integrate(window)

    def _prune_locked(self) -> None:
        keep_from = min(self._starts) if self._starts else self._dropped + len(self._samples)
        cut = keep_from - self._dropped
        if cut > 0:
            del self._samples[:cut]
            self._dropped += cut

    def _integrate(self, window: list[Sample]) -> EnergyWindow:
        per_device: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        for k, i in enumerate(self._indices):
            label = self._devices.label(i)
            first, last = window[0][1][k], window[-1][1][k]
            if first is None or last is None:
                per_device[label] = None
                reasons[label] = f"power not readable at the window edge ({self._last_error.get(i, 'unknown error')})"
                continue
            points = [(t, w[k]) for t, w in window if w[k] is not None]
            per_device[label] = trapezoid_j(points)  # type: ignore[arg-type]
        total, reason = total_of(per_device, reasons)
        return EnergyWindow(
            source=self.source,
            duration_s=window[-1][0] - window[0][0],
            total_j=total,
            per_device=per_device,
            samples=len(window),
            unavailable_reason=reason,
            resolution_s=self.resolution_s,
            polled_source=self.polled_source,
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._owns:
            self._devices.close()
