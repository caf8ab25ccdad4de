"""Energy meters: one begin/end window API over NVML, RAPL or nothing."""

from __future__ import annotations

from llem.energy.meters.base import SOURCES, EnergyMeter, EnergyWindow
from llem.energy.meters.crosscheck import CrossCheckedMeter
from llem.energy.meters.null import NullMeter
from llem.energy.meters.nvml_counter import NvmlCounterMeter
from llem.energy.meters.nvml_polling import NvmlPollingMeter, trapezoid_j
from llem.energy.meters.rapl import RaplMeter

__all__ = [
    "SOURCES",
    "CrossCheckedMeter",
    "EnergyMeter",
    "EnergyWindow",
    "NullMeter",
    "NvmlCounterMeter",
    "NvmlPollingMeter",
    "RaplMeter",
    "trapezoid_j",
]
