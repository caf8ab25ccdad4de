"""A scripted NVML for worker processes: `LLEM_NVML_FACTORY=tests.launcher.fake_nvml_env:nvml`.

`LLEM_FAKE_GPU_MEM_PCT` sets the memory use the fake GPU reports.
"""

from __future__ import annotations

import os

from tests.fakes.fake_pynvml import FakeGpu, FakeNvml


def nvml() -> FakeNvml:
    pct = float(os.environ.get("LLEM_FAKE_GPU_MEM_PCT", "10"))
    total = 80 * 2**30
    return FakeNvml([FakeGpu(memory_total=total, memory_used=int(total * pct / 100))])
