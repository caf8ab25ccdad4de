"""`scenario=serving` through `hydra/launcher=llem_slurm` on a real one-node SLURM cluster.

The engine's server is the scripted OpenAI-compatible fake (LLEM_SERVER_FACTORY, given to the groups through
`hydra.launcher.env`, not through the submitting environment). Two load points of one model are one group:
one SLURM job, one server start, reused by the second job; the server runs inside that SLURM job and is gone
when the group ends, and when the SLURM job is cancelled. One test, without SLURM, checks that a group stops
its server before it returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from llem.launch.slurm.job import GroupJob
from llem.measure.result import read_result
from llem.plan.manifest import read_manifest
from tests.slurm.test_slurm_units import _fake_run, _group

REPO = Path(__file__).resolve().parents[2]
FAKE = "tests.serving.fake_server"
SERVING = ["scenario=serving", "backend=vllm", "model=tiny", "load.num_requests=16", "load.warmup_requests=2",
           "max_output_tokens=8", "num_input_prompts=4", "max_input_tokens=32", "serving.min_steady_seconds=0.1",
           "baseline.duration_seconds=0.5", "baseline.settle_seconds=0", "campaign.execution.config_gap_seconds=0",
           "campaign.execution.cycle_gap_seconds=0", "campaign.execution.warmup_prompts=0",
           "campaign.execution.cycles=1", "campaign.health_check.enabled=false",
           "hydra/launcher=llem_slurm", "hydra.launcher.poll_interval_s=1", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.time_min=10",
           # the node has no GPU gres: the fake server needs none (vLLM would ask for one)
           "hydra.launcher.gpus_per_task=0",
           "+hydra.launcher.env.LLEM_SERVER_FACTORY='tests.serving.scripted_factory:fake'"]


def _cmd(sweep: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", *SERVING, *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLEM_SERVER_FACTORY", "LLEM_FAKE_ITL_S")}
    return {**env, "PYTHONPATH": str(REPO)}


def _is_fake_server(pid: int) -> bool:
    """Whether `pid` is a running scripted server (a zombie or a reused pid is not)."""
    try:
        return FAKE in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while _is_fake_server(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _is_fake_server(pid)


def _slurm_nodes() -> set[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def _job_pids(slurm_id: str) -> set[int]:
    """The processes SLURM counts as the job's (every step, the batch step included)."""
    out = subprocess.run(["scontrol", "listpids", slurm_id], capture_output=True, text=True, check=False).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()}


class _Session:
    """The worker's session as a group's jobs leave it: a server still running after the last job."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def stop_server(self) -> None:
        self.events.append("server stopped")


def test_a_group_stops_its_server_before_it_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SLURM: the launcher sees a group end when its return is written, so the server must be gone
    by then (also when a job raises out of the group)."""
    events: list[str] = []
    monkeypatch.setitem(sys.modules, "llem.task", types.SimpleNamespace(SESSION=_Session(events)))
    ran: list[int] = []
    monkeypatch.setattr(GroupJob, "_run_one", _fake_run(ran))
    outcomes = _group(tmp_path, [0, 1])()
    events.append("returned")
    assert ran == [0, 1] and len(outcomes) == 2
    assert events == ["server stopped", "returned"]

    def broken(self: GroupJob, spec: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(GroupJob, "_run_one", broken)
    with pytest.raises(KeyboardInterrupt):
        _group(tmp_path / "again", [0])()
    assert events[-1] == "server stopped"


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_serving_group_starts_its_server_once_on_the_node_and_stops_it(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    started = time.monotonic()
    proc = subprocess.run(_cmd(sweep, "load.rate=50,inf"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=_env(), check=False)
    print(f"serving campaign under SLURM took {time.monotonic() - started:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = read_manifest(sweep / ".state" / "campaign_manifest.json")
    assert [j.status for j in m.jobs] == ["completed", "completed"]
    results = [read_result(Path(j.result_path or "")) for j in m.jobs]
    assert all(r.serving is not None and r.serving["server"]["started_by_llem"] for r in results)
    served = [r.serving["server"] for r in results if r.serving is not None]
    assert all(s["argv"][1:3] == ["-m", FAKE] for s in served)  # the scripted server, as the group's env named it
    # one start in the group's SLURM job, reused by its second job
    assert [j.server["reused"] for j in m.jobs if j.server] == [False, True]
    assert len({j.server["id"] for j in m.jobs if j.server}) == 1 and m.jobs[0].server["id"] == served[0]["id"]
    assert len({s["pid"] for s in served}) == 1
    placements = [json.loads((sweep / str(j.job_num) / ".slurm.json").read_text()) for j in m.jobs]
    assert len({p["slurm_job_id"] for p in placements}) == 1
    assert len(list((sweep / ".slurm").glob("*_submission.sh"))) == 1
    # on the SLURM node: the job that ran it is there, and the server answered on that node's loopback
    assert {j.node for j in m.jobs} == {placements[0]["node"]} and placements[0]["node"] in _slurm_nodes()
    assert all(s["url"].startswith("http://127.0.0.1:") for s in served)
    log = (sweep / "0" / "server.log").read_text()
    assert "fake server listening" in log
    # the group stopped it before it ended: nothing of it is left once the campaign returns
    assert not _is_fake_server(served[0]["pid"])


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_scancel_of_a_serving_group_ends_its_server(tmp_path: Path) -> None:
    """The server runs in its own session, a child of the group's process: SLURM counts it as the job's, and
    cancelling the job ends it (the group's own process ignores SIGTERM under submitit until SIGKILL)."""
    sweep = tmp_path / "sweep"
    slow = ["load.rate=2", "max_output_tokens=32", "+hydra.launcher.env.LLEM_FAKE_ITL_S='0.3'",
            "hydra.sweeper.max_attempts=1"]
    err = tmp_path / "llem.err"
    with err.open("w") as sink:
        proc = subprocess.Popen(_cmd(sweep, *slow), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=sink)
    server: list[int] = []
    slurm_id = ""
    try:
        deadline = time.monotonic() + 240
        while not server and time.monotonic() < deadline:
            assert proc.poll() is None, err.read_text()[-4000:]
            placement = sweep / "0" / ".slurm.json"
            if placement.exists() and (sweep / "0" / "server.log").exists():
                slurm_id = json.loads(placement.read_text())["slurm_job_id"]
                server = [p for p in _job_pids(slurm_id) if _is_fake_server(p)]
            time.sleep(0.2)
        assert len(server) == 1, "no running server among the SLURM job's processes"
        assert not (sweep / "0" / "result.json").exists()  # cancelled mid-load
        subprocess.run(["scancel", slurm_id], check=True)
        assert _gone(server[0], within_s=30)
        print(f"server {server[0]} of SLURM job {slurm_id} ended after scancel", file=sys.stderr)
    finally:
        if slurm_id:
            subprocess.run(["scancel", slurm_id], check=False)  # also when an assertion came first
        proc.kill()  # the orchestrator would only wait out its grace period to fail the job
        proc.wait(timeout=60)
