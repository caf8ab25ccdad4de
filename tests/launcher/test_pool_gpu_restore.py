"""A local worker killed mid-job (a timeout, Ctrl-C, a stop) cannot restore the GPU settings it made: the launcher
restores them as it stops its workers, so no GPU stays capped until the next llem run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llem.energy.devices.gpu_restore import RestoreRecord, RestoreRecords
from llem.launch.options import LocalOptions
from llem.launch.pool import WorkerPool
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip


def test_closing_a_local_pool_restores_what_a_killed_worker_left(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("LLEM_GPU_RESTORE_DIR", str(tmp_path / "restore"))
    fake = FakeNvml([FakeGpu(), FakeGpu()])
    capped, untouched = fake.gpus
    capped.power_limit_mw = 300_000  # what the killed worker set
    records = RestoreRecords()
    records.write(RestoreRecord(uuid=capped.uuid, pid=_dead_pid(), pid_start=None, host="here",
                                original_power_limit_mw=700_000, applied={"power_limit_w": 300}))  # fmt: skip
    live = RestoreRecord.mine(untouched.uuid)  # a live process's record (another campaign's job) is not touched
    live.original_power_limit_mw = 700_000
    untouched.power_limit_mw = 450_000
    records.write(live)
    pool = WorkerPool("local", LocalOptions(), tmp_path / "sweep", nvml=fake)
    pool.close()
    assert capped.power_limit_mw == 700_000 and untouched.power_limit_mw == 450_000
    assert [r.uuid for r in RestoreRecords().all()] == [untouched.uuid]
