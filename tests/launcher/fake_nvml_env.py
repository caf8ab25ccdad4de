"""A scripted NVML for worker processes: `LLEM_NVML_FACTORY=tests.launcher.fake_nvml_env:nvml`.

`LLEM_FAKE_GPU_MEM_PCT` sets the memory use the fake GPUs report, `LLEM_FAKE_GPUS` how many there are (1).
Their energy counters advance with time (100 W), as a real GPU's would.
"""

from __future__ import annotations

import os
import time

from tests.fakes.fake_pynvml import FakeGpu, FakeNvml


def nvml() -> FakeNvml:
    pct = float(os.environ.get("LLEM_FAKE_GPU_MEM_PCT", "10"))
    count = int(os.environ.get("LLEM_FAKE_GPUS", "1"))
    total = 80 * 2**30
    return FakeNvml([FakeGpu(memory_total=total, memory_used=int(total * pct / 100), energy_mj=_energy_mj)
                     for _ in range(count)])


def _energy_mj(t: float) -> int:
    return int(time.monotonic() * 100_000)  # 100 W since an arbitrary origin
