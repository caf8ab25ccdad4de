"""Energy meters: one begin/end window API over NVML or RAPL (the monitor combines them per job)."""

from __future__ import annotations

from llem.energy.meters.base import EnergyMeter, EnergyWindow
from llem.energy.meters.crosscheck import CrossCheckedMeter
from llem.energy.meters.nvml_counter import NvmlCounterMeter
from llem.energy.meters.nvml_polling import NvmlPollingMeter, trapezoid_j
from llem.energy.meters.rapl import RaplMeter

__all__ = [
    "CrossCheckedMeter",
    "EnergyMeter",
    "EnergyWindow",
    "NvmlCounterMeter",
    "NvmlPollingMeter",
    "RaplMeter",
    "trapezoid_j",
]
