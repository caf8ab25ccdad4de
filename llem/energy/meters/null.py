"""A meter that measures nothing but says why, so results never show a fake 0 J."""

from __future__ import annotations

import time
from collections.abc import Callable

from llem.energy.meters.base import EnergyMeter, EnergyWindow


class NullMeter(EnergyMeter):
    source = "none"
    resolution_s = None

    def __init__(self, reason: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.reason = reason
        self._clock = clock

    def _begin(self, name: str) -> float:
        return self._clock()

    def _end(self, name: str, state: float) -> EnergyWindow:
        return EnergyWindow(
            source=self.source,
            duration_s=self._clock() - state,
            total_j=None,
            per_device={},
            samples=0,
            unavailable_reason=self.reason,
            resolution_s=None,
        )
