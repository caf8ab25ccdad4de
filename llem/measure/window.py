"""The measured window: whole passes of the workload until it has lasted long enough.

The NVML energy counter moves in steps of about 100 ms, so a window must span many
steps before its energy is trustworthy (a 1 s window carries several per cent of edge
error). Rather than asking users to guess a prompt count per GPU, the workload repeats
until `min_seconds` have passed; every pass is whole, so per-pass figures are exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llem.backends.base import Backend, GenerationOutput, SequenceTiming
from llem.config import ExperimentConfig
from llem.prompts.load import Prompt


@dataclass
class Window:
    """What one measured window ran and what the energy monitor saw over it."""

    name: str
    duration_s: float
    outputs: list[GenerationOutput]  # one per pass
    energy: Any

    @property
    def passes(self) -> int:
        return len(self.outputs)

    @property
    def sequences(self) -> list[SequenceTiming]:
        return [s for out in self.outputs for s in out.sequences]


def run_window(
    name: str,
    backend: Backend,
    prompts: list[Prompt],
    experiment: ExperimentConfig,
    monitor: Any,
    min_seconds: float,
) -> Window:
    """Run `prompts` as whole passes until `min_seconds` have passed (at least one), inside one energy window.

    The device is synchronised at both edges, so the window holds exactly the work it reports.
    """
    outputs: list[GenerationOutput] = []
    backend.synchronize()
    monitor.begin_window(name)
    try:
        start = time.perf_counter()
        while True:
            outputs.append(backend.generate(prompts, experiment))
            backend.synchronize()
            if time.perf_counter() - start >= min_seconds:
                break
        duration = time.perf_counter() - start
    finally:
        energy = monitor.end_window(name)
    return Window(name, duration, outputs, energy)
