"""Campaigns through `hydra/launcher=llem_slurm` on a real one-node SLURM cluster, with the tiny model.

The node has no GPU gres. Most jobs say `backend.device=cpu`; the resume test leaves it at `auto`, which
runs on CPU on such a partition. The two groups are two pytorch precisions: each group is one SLURM job
that loads its model once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llem.measure.result import read_result
from llem.plan.manifest import read_manifest

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
REPO = Path(__file__).resolve().parents[2]
FAST = ["num_input_prompts=2", "max_output_tokens=3", "max_input_tokens=16", "warmup.num_prompts=0",
        "baseline.enabled=false", "campaign.execution.config_gap_seconds=0", "campaign.execution.cycle_gap_seconds=0",
        "campaign.execution.warmup_prompts=0", "campaign.execution.cycles=1", "campaign.health_check.enabled=false",
        "backend.device=cpu", "hydra/launcher=llem_slurm", "hydra.launcher.poll_interval_s=1",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.time_min=10"]


def _cmd(sweep: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", *FAST, *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _run(sweep: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(sweep, *args), cwd=sweep.parent, capture_output=True, text=True, timeout=600,
                          env=_env(), check=False)


def _manifest(sweep: Path) -> Any:
    return read_manifest(sweep / ".state" / "campaign_manifest.json")


def _placement(sweep: Path, job_num: int) -> dict[str, Any]:
    return json.loads((sweep / str(job_num) / ".slurm.json").read_text())


def _submissions(sweep: Path) -> list[Path]:
    return sorted((sweep / ".slurm").glob("*_submission.sh"))


@pytest.fixture(scope="module")
def two_groups(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    sweep = tmp_path_factory.mktemp("slurm-two-groups") / "sweep"
    started = time.monotonic()
    proc = _run(sweep, "fp_precision=float32,bfloat16", "backend.batch_size=1,2,3")
    print(f"two-group campaign took {time.monotonic() - started:.0f} s", file=sys.stderr)
    return sweep, proc


def test_each_group_is_one_slurm_job_that_loads_its_model_once(two_groups: Any) -> None:
    sweep, proc = two_groups
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = _manifest(sweep)
    assert [j.status for j in m.jobs] == ["completed"] * 6
    results = {j.job_num: read_result(Path(j.result_path or "")) for j in m.jobs}
    assert sum(not r.model_reused for r in results.values()) == 2  # one load per group
    by_slurm_job: dict[str, set[str]] = {}
    for j in m.jobs:
        by_slurm_job.setdefault(_placement(sweep, j.job_num)["slurm_job_id"], set()).add(results[j.job_num].fp_precision)
    assert len(by_slurm_job) == 2 and all(len(p) == 1 for p in by_slurm_job.values())
    assert len(_submissions(sweep)) == 2
    assert len({r.config_hash for r in results.values()}) == 6


def test_the_manifest_records_slurm_job_and_node(two_groups: Any) -> None:
    sweep, proc = two_groups
    assert proc.returncode == 0
    for job in _manifest(sweep).jobs:
        where = _placement(sweep, job.job_num)
        assert job.slurm_job_id == where["slurm_job_id"] and job.node == where["node"] and job.node


def _wait_for_result(sweep: Path, job_num: int, proc: subprocess.Popen[str], timeout: float = 240) -> Path:
    path = sweep / str(job_num) / "result.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        time.sleep(0.1)
    raise AssertionError(f"job {job_num} never produced a result")


# three jobs in one group, 15 s apart (the campaign's config gap, which the group keeps): time to cancel or
# requeue the group after its first result
LONGER = ["num_input_prompts=2,24,25", "max_output_tokens=32", "max_input_tokens=32",
          "campaign.execution.config_gap_seconds=15"]


def _no_result_twice(sweep: Path, first: Path, first_mtime: int) -> Any:
    m = _manifest(sweep)
    assert [j.status for j in m.jobs] == ["completed"] * 3
    assert m.counts().get("completed") == len(m.jobs)
    assert first.stat().st_mtime_ns == first_mtime  # job 0 never ran again
    hashes = [read_result(Path(j.result_path or "")).config_hash for j in m.jobs]
    assert hashes == [j.config_hash for j in m.jobs] and len(set(hashes)) == 3
    assert sorted(p.name for p in (sweep / "results").iterdir()) == ["job-0.json", "job-1.json", "job-2.json"]
    return m


def test_a_cancelled_group_resumes_without_producing_a_result_twice(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    started = time.monotonic()
    proc = subprocess.Popen(_cmd(sweep, *LONGER), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = _wait_for_result(sweep, 0, proc)
        first_mtime = first.stat().st_mtime_ns
        cancelled = _placement(sweep, 0)["slurm_job_id"]
        subprocess.run(["scancel", cancelled], check=True)
        proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (sweep / "1" / "result.json").exists() or _placement(sweep, 1)["slurm_job_id"] != cancelled
    again = _run(sweep, *LONGER)  # the same command: the campaign finishes, nothing runs twice
    assert again.returncode == 0, again.stderr[-4000:]
    m = _no_result_twice(sweep, first, first_mtime)
    assert _placement(sweep, 0)["slurm_job_id"] == cancelled
    assert {_placement(sweep, n)["slurm_job_id"] for n in (1, 2)} != {cancelled}
    assert all(j.attempts <= 2 for j in m.jobs)
    print(f"cancel and resume took {time.monotonic() - started:.0f} s", file=sys.stderr)


def test_a_requeued_group_skips_the_jobs_it_finished(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(_cmd(sweep, *LONGER), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = _wait_for_result(sweep, 0, proc)
        first_mtime = first.stat().st_mtime_ns
        slurm_id = _placement(sweep, 0)["slurm_job_id"]
        subprocess.run(["scontrol", "requeue", slurm_id], check=True)  # as preemption does
        # a requeued job waits a while before it is eligible again; let it start at once
        for _ in range(300):
            state = subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%T"], capture_output=True, text=True,
                                   check=False).stdout.strip()
            if state == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], check=True)
                break
            time.sleep(0.2)
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-4000:]
    _no_result_twice(sweep, first, first_mtime)
    assert {_placement(sweep, n)["slurm_job_id"] for n in (0, 1, 2)} == {slurm_id}  # the same SLURM job, requeued
    assert len(_submissions(sweep)) == 1
    log = "".join(p.read_text() for p in (sweep / ".slurm").glob(f"{slurm_id}_*_log.err"))
    assert "job 0 already has its result; skipped" in log


def _podman_names(prefix: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True)
    return [n for n in out.stdout.split() if n.startswith(prefix)]


def test_groups_run_in_podman_on_the_node_and_scancel_removes_the_container(tmp_path: Path) -> None:
    """The image holds llem but not the SLURM client side (submitit): the group runs inside it all the same, and a
    cancelled SLURM job takes its container down with it; the same command then finishes the campaign."""
    from tests.containers import image

    image.skip_unless_engine()
    ref = image.test_image()
    in_podman = [f"hydra.launcher.container.image={ref}", "hydra.launcher.container.extra_args=['--network=none']"]
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(_cmd(sweep, *LONGER, *in_podman), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = _wait_for_result(sweep, 0, proc)
        first_mtime = first.stat().st_mtime_ns
        cancelled = _placement(sweep, 0)["slurm_job_id"]
        assert len(_podman_names(f"llem-slurm-{cancelled}-")) == 1  # the group runs in its container
        subprocess.run(["scancel", cancelled], check=True)
        proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 60
    while _podman_names(f"llem-slurm-{cancelled}-") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _podman_names(f"llem-slurm-{cancelled}-") == []
    again = _run(sweep, *LONGER, *in_podman)
    assert again.returncode == 0, again.stderr[-4000:]
    m = _no_result_twice(sweep, first, first_mtime)
    # every result was measured inside the image (its Python, not the one running this test)
    inside = image.client().run(ref, ["python", "-c", "import platform; print(platform.python_version())"],
                                remove=True, networks=["none"]).strip()
    assert {read_result(Path(j.result_path or "")).environment["python"] for j in m.jobs} == {inside}
    assert _podman_names("llem-slurm-") == []


def _db_job(sweep: Path, job_num: int) -> dict[str, Any] | None:
    """A job as the campaign state holds it now (read-only, beside the running orchestrator)."""
    import sqlite3

    db = sweep / ".state" / "campaign.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT data FROM jobs WHERE job_num = ?", (job_num,)).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else json.loads(row[0])


def _slurm_job_state(slurm_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%T"], capture_output=True, text=True,
                          check=False).stdout.strip()


def test_a_killed_orchestrator_resumes_into_its_running_group(tmp_path: Path) -> None:
    """kill -9 of the orchestrator while its group runs, then the same command: the run re-attaches to the SLURM
    job still running (one SLURM job for the group, one result per job). The jobs leave `backend.device` at
    `auto` on this GPU-less partition: they run on CPU, with a note, where sbatch would refuse a GPU request.
    While the group runs, each job's outcome is in the campaign state as soon as the group reports it, and the
    health checks the group runs are in the campaign's events."""
    auto = [a for a in FAST if a not in ("backend.device=cpu", "campaign.health_check.enabled=false")]
    auto += ["backend.device=auto", "campaign.health_check.enabled=true"]
    cmd = [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *auto, *LONGER]
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = _wait_for_result(sweep, 0, proc)
        first_mtime = first.stat().st_mtime_ns
        slurm_id = _placement(sweep, 0)["slurm_job_id"]
        deadline = time.monotonic() + 60
        while (_db_job(sweep, 0) or {}).get("status") != "completed" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (_db_job(sweep, 0) or {}).get("status") == "completed"  # recorded while its group still runs
        assert _slurm_job_state(slurm_id) == "RUNNING" and not (sweep / "2" / "result.json").exists()
        proc.kill()  # SIGKILL: no handler runs, the SLURM job goes on
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _slurm_job_state(slurm_id) in ("RUNNING", "COMPLETING", "COMPLETED", "")
    # a temp file as the live group's atomic write of job 2's result leaves it: no leftover, so it must stay
    in_flight = sweep / "2" / ".result.json.inflight.tmp"
    in_flight.parent.mkdir(exist_ok=True)
    in_flight.write_text("being written")
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(), check=False)
    assert again.returncode == 0, again.stderr[-4000:]
    m = _no_result_twice(sweep, first, first_mtime)
    assert len(_submissions(sweep)) == 1  # exactly one SLURM job for the group, across both runs
    assert {_placement(sweep, n)["slurm_job_id"] for n in (0, 1, 2)} == {slurm_id}
    assert {j.slurm_job_id for j in m.jobs} == {slurm_id}
    assert any(e.get("kind") == "slurm_no_gpus" for e in m.events)
    checks = [e for e in m.events if e.get("kind") == "health_check"]  # run inside the group, recorded here
    assert checks and all(e["healthy"] for e in checks)
    assert in_flight.exists()  # the resumed run left the live SLURM job's files alone
