"""Background telemetry (power, temperature, clocks, utilisation, memory) for the result's time series.

Energy comes from the meters; these rows explain it afterwards (a throttled
GPU, a cold start, clocks that never ramped). Unreadable values are None.
`power_w` is the same reading the polled cross-check integrates: instant power
where the device offers it, else the averaged reading (`NvmlDevices.power_source`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llem.energy.devices import DeviceLost, DeviceReadError
from llem.energy.devices.nvml import NvmlDevices

COLUMNS = (
    "t_s",
    "device",
    "power_w",
    "temperature_c",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "gpu_util_pct",
    "mem_util_pct",
    "mem_used_bytes",
    "throttle_thermal",
    "throttle_power",
)


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("t_s", pa.float64()),
            ("device", pa.string()),
            ("power_w", pa.float64()),
            ("temperature_c", pa.int32()),
            ("sm_clock_mhz", pa.int32()),
            ("mem_clock_mhz", pa.int32()),
            ("gpu_util_pct", pa.int32()),
            ("mem_util_pct", pa.int32()),
            ("mem_used_bytes", pa.int64()),
            ("throttle_thermal", pa.bool_()),
            ("throttle_power", pa.bool_()),
        ]
    )


class TelemetrySampler:
    """Samples every device every `interval_s` between start() and stop()."""

    def __init__(
        self,
        devices: NvmlDevices | None,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        start_thread: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._devices = devices
        self.interval_s = interval_s
        self._clock = clock
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0: float | None = None
        self._start_thread = start_thread
        self._started = False
        self.unavailable_reason: str | None = (
            None if devices is not None else "no NVML devices: GPU telemetry not recorded"
        )

    @property
    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._rows)

    def start(self) -> None:
        if self._started:
            raise RuntimeError("sampler already started")
        self._started = True
        self._t0 = self._clock()
        self._stop.clear()
        if self._devices is None:
            return
        self.sample_once()
        if self._start_thread:
            self._thread = threading.Thread(target=self._run, name="llem-telemetry", daemon=True)
            self._thread.start()

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling (one last reading at the end) and return all rows."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._started and self._devices is not None:
            self.sample_once()
        self._started = False
        return self.rows

    def _run(self) -> None:
        next_t = time.monotonic()
        while True:
            next_t += self.interval_s
            delay = next_t - time.monotonic()
            if delay < 0:
                next_t = time.monotonic()
                delay = 0.0
            if self._stop.wait(delay):
                return
            try:
                self.sample_once()
            except RuntimeError:  # devices closed under us: nothing more to sample
                return

    def sample_once(self) -> None:
        """Append one row per device (the thread calls this; tests may call it directly)."""
        devs = self._devices
        if devs is None or not devs.is_open:
            return  # nothing to read, or the meter that owned the devices already closed them
        if self._t0 is None:
            self._t0 = self._clock()
        rows = [self._row(devs, i) for i in devs.indices]
        with self._lock:
            self._rows.extend(rows)

    def _row(self, devs: NvmlDevices, i: int) -> dict[str, Any]:
        t = self._clock() - (self._t0 or 0.0)
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row["t_s"] = t
        row["device"] = devs.label(i)
        try:
            row["power_w"] = devs.polled_power_mw(i) / 1000.0
        except DeviceLost:
            return row
        except DeviceReadError:
            pass  # e.g. power not supported: the other columns may still read
        try:
            row["temperature_c"] = devs.temperature_c(i)
            clocks = devs.clocks_mhz(i)
            row["sm_clock_mhz"], row["mem_clock_mhz"] = clocks.sm_mhz, clocks.mem_mhz
            util = devs.utilization_pct(i)
            row["gpu_util_pct"], row["mem_util_pct"] = util.gpu_pct, util.memory_pct
            mem = devs.memory_bytes(i)
            row["mem_used_bytes"] = None if mem is None else mem.used
            thr = devs.throttle_reasons(i)
            if thr is not None:
                row["throttle_thermal"], row["throttle_power"] = thr.thermal, thr.power
        except DeviceLost:
            pass  # leave the rest of the row None
        return row

    # ------------------------------------------------------------------ summaries
    @property
    def samples(self) -> int:
        """Number of sampling instants (rows per device)."""
        with self._lock:
            n = len(self._rows)
        k = len(self._devices.indices) if self._devices is not None else 0
        return n // k if k else 0

    @property
    def throttled(self) -> bool:
        return any(r["throttle_thermal"] for r in self.rows)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per-device peaks and means for the result file."""
        out: dict[str, dict[str, Any]] = {}
        by_dev: dict[str, list[dict[str, Any]]] = {}
        for r in self.rows:
            by_dev.setdefault(r["device"], []).append(r)

        def vals(rs: list[dict[str, Any]], key: str) -> list[Any]:
            return [r[key] for r in rs if r[key] is not None]

        for dev, rs in by_dev.items():
            power, temp, mem = vals(rs, "power_w"), vals(rs, "temperature_c"), vals(rs, "mem_used_bytes")
            util = vals(rs, "gpu_util_pct")
            out[dev] = {
                "samples": len(rs),
                "mean_power_w": sum(power) / len(power) if power else None,
                "max_power_w": max(power) if power else None,
                "max_temperature_c": max(temp) if temp else None,
                "max_mem_used_bytes": max(mem) if mem else None,
                "mean_gpu_util_pct": sum(util) / len(util) if util else None,
                "throttle_thermal": any(vals(rs, "throttle_thermal")),
                "throttle_power": any(vals(rs, "throttle_power")),
            }
        return out

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write rows atomically (temp file in the same directory, then os.replace)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from llem.atomic import atomic_write

        table = pa.Table.from_pylist(self.rows, schema=_schema())
        return atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))
