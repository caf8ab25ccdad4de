"""Restore records: one atomic file per GPU, stale exactly when the owning process is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llem.energy.devices.gpu_restore import RestoreRecord, RestoreRecords, process_start


def test_a_record_is_stale_only_when_its_owner_is_gone_or_its_pid_was_reused(tmp_path: Path) -> None:
    records = RestoreRecords(tmp_path)
    mine = RestoreRecord.mine("GPU-a")
    assert mine.is_mine and not mine.stale and mine.pid_start == process_start(os.getpid())
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    gone = RestoreRecord(uuid="GPU-b", pid=dead, pid_start=None, host="h")
    reused = RestoreRecord(uuid="GPU-c", pid=os.getpid(), pid_start="1", host="h")  # same PID, another process
    for record in (mine, gone, reused):
        records.write(record)
    assert [(r.uuid, r.stale) for r in records.all()] == [("GPU-a", False), ("GPU-b", True), ("GPU-c", True)]
    assert not reused.is_mine


def test_records_round_trip_and_a_foreign_file_is_ignored(tmp_path: Path) -> None:
    records = RestoreRecords(tmp_path)
    record = RestoreRecord.mine("GPU-1/odd:name")
    record.original_power_limit_mw, record.locked_clocks, record.applied = 650_000, ["sm"], {"power_limit_w": 300}
    records.write(record)
    (tmp_path / "notes.json").write_text("not json")
    assert records.all() == [record] and records.read("GPU-1/odd:name") == record
    assert "power limit 650 W, sm clock unlocked" in record.describe() and "power_limit_w=300" in record.describe()
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left
    records.remove("GPU-1/odd:name")
    assert records.read("GPU-1/odd:name") is None
