"""Scripted GPUs whose power limit and clocks can be set, shared by every process of a test through a file:
`LLEM_NVML_FACTORY=tests.launcher.fake_gpu_settings_env:nvml`.

`LLEM_FAKE_GPU_STATE` names the directory of the shared state and call log (tests/fakes/gpu_settings_store.py),
`LLEM_FAKE_GPUS` how many GPUs there are (1), `LLEM_FAKE_GPU_UNPRIVILEGED=1` makes every set call fail with
NVML's NoPermission, as for a user without root, and `LLEM_FAKE_GPU_SET_DELAY_S` makes each job's first set
call slow, so a test can kill a worker while it holds changed settings.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tests.fakes.fake_pynvml import FakeGpu, FakeHandle, FakeNvml
from tests.fakes.gpu_settings_store import FileStore


class _SlowSetNvml(FakeNvml):
    def nvmlDeviceSetPowerManagementLimit(self, handle: FakeHandle, limit: int) -> None:
        super().nvmlDeviceSetPowerManagementLimit(handle, limit)
        delay = float(os.environ.get("LLEM_FAKE_GPU_SET_DELAY_S", "0") or 0)
        if delay:
            time.sleep(delay)  # the limit is set: a kill now leaves it changed


def nvml() -> Any:
    count = int(os.environ.get("LLEM_FAKE_GPUS", "1"))
    total = 80 * 2**30
    gpus = [FakeGpu(memory_total=total, memory_used=total // 10, energy_mj=_energy_mj) for _ in range(count)]
    return _SlowSetNvml(gpus, privileged=os.environ.get("LLEM_FAKE_GPU_UNPRIVILEGED") != "1",
                        store=FileStore(os.environ["LLEM_FAKE_GPU_STATE"]))


def _energy_mj(t: float) -> int:
    return int(time.monotonic() * 100_000)  # 100 W since an arbitrary origin
