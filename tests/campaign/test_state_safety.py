"""The campaign state under the conditions a real campaign meets: a crash before its first commit, job threads and
the engine writing at once, writes that arrive after it closed, interrupts inside a transaction, and campaign dirs
whose path holds characters that mean something in a URI."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import llem.campaign.state as state_module
from llem.campaign.state import DB_NAME, CampaignState, StateClosed, read_state, recorded_shuffle_seed
from llem.launch.interrupts import sigterm_as_interrupt
from llem.plan.manifest import CampaignManifest, ManifestJob, utc_now


def _manifest(sweep: Path, jobs: int, **fields: Any) -> CampaignManifest:
    return CampaignManifest(
        campaign_name="c", config_hash="h", created_at=utc_now(), updated_at=utc_now(), sweep_dir=str(sweep),
        cycles=1, structure="interleaved",
        jobs=[ManifestJob(job_num=n, overrides=[f"+n={n}"], backend="pytorch", cycle=0, config_hash=f"c{n}")
              for n in range(jobs)],
        **fields,
    )  # fmt: skip


def _state(sweep: Path, jobs: int = 2, export_interval_s: float = 0.0, **fields: Any) -> CampaignState:
    state = CampaignState(sweep / ".state" / "campaign_manifest.json", export_interval_s=export_interval_s)
    state.replace(_manifest(sweep, jobs, **fields))
    return state


def _stored(state: CampaignState) -> CampaignManifest:
    stored = read_state(state.manifest_path)
    assert stored is not None
    return stored


# ---------------------------------------------------------------------------------------------- first creation
_CRASH_AT_FIRST_WRITE = """
import sys
from pathlib import Path
from tests.campaign.test_state_safety import _manifest
from llem.campaign.state import CampaignState
sweep = Path(sys.argv[1])
CampaignState(sweep / ".state" / "campaign_manifest.json").replace(_manifest(sweep, 2))
"""


def test_a_crash_before_the_first_commit_leaves_a_fresh_campaign_dir(tmp_path: Path) -> None:
    """Killed (SIGKILL) in the very first transaction: the database file exists, but holds no campaign."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _CRASH_AT_FIRST_WRITE, str(tmp_path)], cwd=repo,
                          env={**os.environ, "LLEM_CRASH_AT_WRITE": f"{DB_NAME}:1"}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = CampaignState(tmp_path / ".state" / "campaign_manifest.json")
    assert state.db_path.exists()
    assert not state.exists()  # treated as fresh: the next run creates the campaign instead of failing to load it
    assert read_state(state.manifest_path) is None and recorded_shuffle_seed(state.manifest_path) is None
    state.replace(_manifest(tmp_path, 2))
    state.close()
    assert [j.status for j in _stored(state).jobs] == ["pending", "pending"]


# ---------------------------------------------------------------------------------------------- threads
def test_job_threads_and_the_engine_write_at_once(tmp_path: Path) -> None:
    jobs = 8
    state = _state(tmp_path, jobs, export_interval_s=3600.0)
    errors: list[BaseException] = []
    start = threading.Barrier(jobs + 1)

    def job_thread(n: int) -> None:
        try:
            start.wait()
            for attempt in range(1, 21):
                state.update({n: {"status": "running", "attempts": attempt}})
                state.event({"kind": "health", "job_num": n})
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=job_thread, args=(n,)) for n in range(jobs)]
    for thread in threads:
        thread.start()
    start.wait()
    for _ in range(20):  # the engine, meanwhile (as `_interrupted` does on a parallel Ctrl-C)
        state.set_fields(group_by=["backend"])
        state.event({"kind": "interrupted", "job_num": None})
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    stored = _stored(state)
    assert [j.attempts for j in stored.jobs] == [20] * jobs
    assert len([e for e in stored.events if e["kind"] == "health"]) == 20 * jobs
    assert stored.model_dump(exclude={"updated_at"}) == state.manifest.model_dump(exclude={"updated_at"})


def test_a_write_after_close_is_refused_and_never_reopens_the_database(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.update({0: {"status": "running"}})
    state.close()
    late: list[BaseException] = []

    def late_job_thread() -> None:  # a job thread the launcher did not stop in time
        try:
            state.update({0: {"status": "completed"}})
        except BaseException as error:  # noqa: BLE001 - examined below
            late.append(error)

    thread = threading.Thread(target=late_job_thread)
    thread.start()
    thread.join(10)
    assert len(late) == 1 and isinstance(late[0], StateClosed), late
    assert "job(s) [0]" in str(late[0]) and "closed" in str(late[0])
    for write in (lambda: state.event({"kind": "late"}), lambda: state.set_fields(group_by=[]),
                  lambda: state.export(force=True)):  # fmt: skip
        with pytest.raises(StateClosed):
            write()
    assert state._db is None  # not reopened behind the released campaign lock
    stored = _stored(state)
    assert stored.job(0).status == "running" and not [e for e in stored.events if e["kind"] == "late"]
    assert state.manifest.job(0).status == "running"  # memory agrees with what was recorded


# ---------------------------------------------------------------------------------------------- interrupts
def test_ctrl_c_inside_a_transaction_rolls_it_back_and_the_next_write_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt between BEGIN IMMEDIATE and COMMIT (raised there, as a signal handler would)."""
    state = _state(tmp_path)

    def interrupted(path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(state_module, "crash_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        state.update({0: {"status": "running", "attempts": 1}})
    monkeypatch.undo()
    assert state.manifest.job(0).status == "pending"  # memory did not take the change the database refused
    assert _stored(state).job(0).status == "pending"
    state.update({1: {"status": "running"}})  # the connection is not left inside the cut transaction
    state.event({"kind": "after"})
    stored = _stored(state)
    assert [j.status for j in stored.jobs] == ["pending", "running"] and stored.events[-1]["kind"] == "after"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_transaction_waits_for_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """Ctrl-C or SIGTERM delivered between BEGIN IMMEDIATE and COMMIT: the write completes, then it is raised."""
    state = _state(tmp_path)
    signalled: list[int] = []

    def signal_now(path: Path) -> None:
        if not signalled:
            signalled.append(signum)
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(state_module, "crash_point", signal_now)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        state.update({0: {"status": "completed"}})
    assert signalled == [signum]
    assert state.manifest.job(0).status == "completed" and _stored(state).job(0).status == "completed"
    state.update({1: {"status": "running"}})  # and the connection is usable
    assert _stored(state).job(1).status == "running"


# ---------------------------------------------------------------------------------------------- read-only opens
@pytest.mark.parametrize("name", ["runs#1", "what?mode=rwc", "a#b?c"])
def test_read_only_opens_find_the_campaign_in_any_dir_name(tmp_path: Path, name: str) -> None:
    sweep = tmp_path / name
    state = _state(sweep, shuffle_seed=4242)
    state.update({1: {"status": "completed"}})
    state.close()
    assert recorded_shuffle_seed(state.manifest_path) == 4242  # a shuffled campaign resumes in the same order
    stored = read_state(state.manifest_path)
    assert stored is not None and [j.status for j in stored.jobs] == ["pending", "completed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no other database was created by the reads


def test_the_database_is_opened_read_only_by_readers(tmp_path: Path) -> None:
    state = _state(tmp_path / "x#y")
    state.close()
    reader = state_module._read_only(state.db_path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("DELETE FROM jobs")
    finally:
        reader.close()
