"""Run the counter and polled-power meters over the same windows.

The counter is the figure reported; the integrated power rides along so a
disagreement (stale counter, broken power sensor, too-short window) shows up
in the result instead of going unnoticed.
"""

from __future__ import annotations

from llem.energy.devices.nvml import NvmlDevices
from llem.energy.meters.base import EnergyMeter, EnergyWindow
from llem.energy.meters.nvml_counter import NvmlCounterMeter
from llem.energy.meters.nvml_polling import NvmlPollingMeter


class CrossCheckedMeter(EnergyMeter):
    source = "nvml"

    def __init__(self, counter: NvmlCounterMeter, polling: NvmlPollingMeter, *, owns_devices: bool = False) -> None:
        super().__init__()
        self.counter = counter
        self.polling = polling
        self.resolution_s = counter.resolution_s
        self._owns = owns_devices

    @property
    def nvml_devices(self) -> NvmlDevices:
        return self.counter.nvml_devices

    @property
    def polled_source(self) -> str:
        return self.polling.polled_source

    def _begin(self, name: str) -> None:
        # Polling opens first and closes last so it spans the counter's window.
        self.polling.begin_window(name)
        try:
            self.counter.begin_window(name)
        except BaseException:
            self.polling.end_window(name)
            raise

    def _end(self, name: str, state: None) -> EnergyWindow:
        try:
            window = self.counter.end_window(name)
        finally:
            polled = self.polling.end_window(name)
        window.polled_total_j = polled.total_j
        window.polled_per_device = polled.per_device
        window.polled_source = polled.polled_source
        window.samples = polled.samples
        return window

    def close(self) -> None:
        self.polling.close()
        self.counter.close()
        if self._owns:
            self.counter.nvml_devices.close()
