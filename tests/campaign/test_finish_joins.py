"""The campaign's finish waits for the launcher's job threads, so none records a job after the state is closed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from llem.launch.options import LocalOptions
from llem.launch.parallel import ParallelJobs


def test_closing_the_parallel_jobs_waits_for_their_threads(tmp_path: Path) -> None:
    jobs = ParallelJobs(None, LocalOptions.from_config({}), owner=str(tmp_path))  # type: ignore[arg-type]
    recorded: list[str] = []
    started = threading.Event()

    def late_job() -> None:  # a job thread still reporting its job when the campaign finishes
        started.set()
        time.sleep(0.5)
        recorded.append("finished")

    jobs.executor.submit(late_job)
    assert started.wait(10)
    jobs.close()
    assert recorded == ["finished"]
    assert not [t for t in threading.enumerate() if t.name.startswith("llem-job")]


def test_a_stuck_job_thread_holds_the_finish_at_most_the_limit(tmp_path: Path) -> None:
    jobs = ParallelJobs(None, LocalOptions.from_config({}), owner=str(tmp_path))  # type: ignore[arg-type]
    release = threading.Event()
    jobs.executor.submit(release.wait, 30)
    began = time.monotonic()
    try:
        jobs.close(join_timeout_s=0.5)
        assert time.monotonic() - began < 5
    finally:
        release.set()
