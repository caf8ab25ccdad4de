"""Kill the orchestrator with SIGKILL at several points and resume: every job ends with exactly one
valid result, no finished job runs again, and the manifest agrees with the files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from llem.measure.result import read_result
from llem.plan.manifest import read_manifest
from tests.campaign import helpers as h

pytestmark = pytest.mark.slow
AXES = ["backend.batch_size=1,2,3", "random_seed=0,1"]


def _fingerprints(sweep: Path) -> dict[int, tuple[int, str]]:
    """(mtime_ns, started_at) of every completed job's result, to prove none is rewritten later."""
    m = h.manifest(sweep)
    out = {}
    for job in m.jobs if m else []:
        if job.status == "completed":
            path = Path(job.result_path or "")
            out[job.job_num] = (path.stat().st_mtime_ns, json.loads(path.read_text())["started_at"])
    return out


def _unchanged(before: dict[int, tuple[int, str]], sweep: Path) -> None:
    after = _fingerprints(sweep)
    for num, print_ in before.items():
        assert after.get(num) == print_, f"job {num} ran again after it had completed"


def test_kill_and_resume_until_done(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    gap = "campaign.execution.config_gap_seconds=0"
    # 1. killed during a job
    proc = h.start(sweep, *AXES, gap)
    m = h.wait_for(proc, sweep, lambda m: any(n >= 1 and s == "running" for n, s in h.statuses(m).items()))
    h.kill(proc)
    seen = _fingerprints(sweep)
    (caught,) = [n for n, s in h.statuses(m).items() if s == "running"]
    assert h.statuses(h.manifest(sweep))[caught] == "running"  # the dead orchestrator could not say otherwise

    # 2. resumed, then killed between jobs (during a config gap)
    proc = h.start(sweep, *AXES, "campaign.execution.config_gap_seconds=3")
    m = h.wait_for(proc, sweep, lambda m: sum(s == "completed" for s in h.statuses(m).values()) >= len(seen) + 1
                   and "running" not in h.statuses(m).values())
    err = h.kill(proc)
    _unchanged(seen, sweep)
    seen = _fingerprints(sweep)
    assert any(e["kind"] == "resumed" for e in m.events)

    # 3. resumed, then killed in the middle of a state write (transaction written, not committed)
    proc = h.start(sweep, *AXES, gap, env={"LLEM_CRASH_AT_WRITE": "campaign.db:4"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -9, err[-2000:]
    assert h.manifest(sweep) is not None  # the state is whole and readable
    _unchanged(seen, sweep)
    seen = _fingerprints(sweep)

    # 3b. resumed, then killed while exporting the readable manifest (after the temp file, before the rename)
    proc = h.start(sweep, *AXES, gap, env={"LLEM_CRASH_AT_WRITE": "campaign_manifest.json:1"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -9, err[-2000:]
    read_manifest(sweep / ".state" / "campaign_manifest.json")  # the previous export is still whole
    _unchanged(seen, sweep)
    seen = _fingerprints(sweep)

    # 4. resumed to the end
    proc = subprocess.run(h.command(sweep, *AXES, gap), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _unchanged(seen, sweep)
    m = h.manifest(sweep)
    assert m is not None and len(m.jobs) == 6
    assert set(h.statuses(m).values()) == {"completed"}
    hashes = set()
    for job in m.jobs:
        result = read_result(Path(job.result_path or ""))
        assert result.config_hash == job.config_hash
        hashes.add(job.config_hash)
        assert Path(job.result_path or "").parent.name == str(job.job_num)
    assert len(hashes) == 6
    job_dirs = sorted(p.name for p in sweep.iterdir() if p.name.isdigit())
    assert job_dirs == [str(i) for i in range(6)]
    assert sorted(os.listdir(sweep / "results")) == [f"job-{i}.json" for i in range(6)]
    assert not list(sweep.rglob("*.tmp"))  # no half-written file was left to be mistaken for a result


def test_a_result_written_before_the_crash_is_recorded_not_rerun(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(h.command(sweep, "backend.batch_size=1,2", "hydra.sweeper.dry_run=true"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # run job 0 alone into its job dir, as if the orchestrator died right after the worker wrote it
    m = h.manifest(sweep)
    job0 = m.jobs[0]
    out = Path(job0.result_path or "").parent
    single = subprocess.run(
        [*h.command(sweep)[:3], *job0.overrides, *h.FAST, f"hydra.run.dir={out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stderr
    before = _fingerprints(sweep)
    assert before == {}  # the manifest does not know yet
    stamp = Path(job0.result_path or "").stat().st_mtime_ns
    proc = subprocess.run(h.command(sweep, "backend.batch_size=1,2"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "finished before the crash were recorded now: [0]" in proc.stderr
    assert Path(job0.result_path or "").stat().st_mtime_ns == stamp
    assert set(h.statuses(h.manifest(sweep)).values()) == {"completed"}


def test_a_second_orchestrator_is_refused(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    long = ["num_input_prompts=64", "max_output_tokens=256", "max_input_tokens=256"]
    first = h.start(sweep, *long, "backend.batch_size=1,2")
    h.wait_for(first, sweep, lambda m: h.statuses(m).get(0) == "running")
    second = subprocess.run(h.command(sweep, *long, "backend.batch_size=1,2"), cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    h.kill(first)
    assert second.returncode != 0
    assert f"campaign dir is in use by PID {first.pid} on host" in second.stderr
    assert "Traceback" not in second.stderr
    # the dead holder's lock is stale: a new orchestrator takes over and says so
    third = subprocess.run(h.command(sweep, *long, "backend.batch_size=1,2", "hydra.sweeper.dry_run=true"),
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert f"previous orchestrator (PID {first.pid}" in third.stderr and "is gone" in third.stderr


def test_changed_campaign_is_refused_unless_asked(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    ok = subprocess.run(h.command(sweep, "backend.batch_size=1,2", "campaign.execution.config_gap_seconds=0"),
                        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    changed = h.command(sweep, "backend.batch_size=1,2,3", "campaign.execution.config_gap_seconds=0")
    refused = subprocess.run(changed, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "jobs added: 1" in refused.stderr and "backend.batch_size=3" in refused.stderr
    stamps = _fingerprints(sweep)
    accepted = subprocess.run([*changed, "hydra.sweeper.resume_changed=true"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
    assert accepted.returncode == 0, accepted.stderr
    m = h.manifest(sweep)
    assert [(j.job_num, j.status) for j in m.jobs] == [(0, "completed"), (1, "completed"), (2, "completed")]
    _unchanged(stamps, sweep)
    assert any(e["kind"] == "plan_changed" for e in m.events)
