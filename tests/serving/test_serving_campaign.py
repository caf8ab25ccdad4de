"""A serving campaign as a user runs it (`python -m llem -m scenario=serving ...`), against the scripted server
(LLEM_SERVER_FACTORY): killed with SIGKILL during a load point, then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
N, WARMUP = 16, 2


def _argv(sweep: Path) -> list[str]:
    return [sys.executable, "-m", "llem", "-m", "scenario=serving", "backend=vllm", "model=tiny",
            "load.rate=inf,4", f"load.num_requests={N}", f"load.warmup_requests={WARMUP}", "max_output_tokens=16",
            "num_input_prompts=4", "max_input_tokens=32", "serving.min_steady_seconds=0.1", "baseline.enabled=false",
            "campaign.execution.config_gap_seconds=0", "campaign.execution.cycle_gap_seconds=0",
            "campaign.execution.cycles=1", "campaign.execution.warmup_prompts=0", f"hydra.sweep.dir={sweep}"]


def _env() -> dict[str, str]:
    return {**os.environ, "LLEM_SERVER_FACTORY": "tests.serving.scripted_factory:fake", "PYTHONPATH": str(REPO),
            "LLEM_FAKE_ITL_S": "0.1"}


def _wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _servers_on(port: int) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if "tests.serving.fake_server" in cmd and str(port) in cmd and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _completions(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(line.startswith("completion ") for line in log.read_text().splitlines())


def test_a_serving_campaign_killed_mid_load_point_resumes_exactly_once_and_leaves_no_server(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    out = open(tmp_path / "first.log", "wb")
    first = subprocess.Popen(_argv(sweep), cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        # job 1 reuses job 0's server: kill the campaign while job 1's measured requests are in flight
        _wait_for(lambda: _completions(sweep / "1" / "server.log") > WARMUP, 180, "job 1's load")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        out.close()
    job0 = json.loads((sweep / "0" / "result.json").read_text())
    port = int(job0["serving"]["server"]["url"].rsplit(":", 1)[1])
    # the worker dies with the campaign and the server with its worker: nothing is left holding the devices
    _wait_for(lambda: not _servers_on(port), 20, f"the server on port {port} to end")
    assert not (sweep / "1" / "result.json").exists()
    job0_bytes = (sweep / "0" / "result.json").read_bytes()

    done = subprocess.run(_argv(sweep), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((sweep / ".state" / "campaign_manifest.json").read_text())
    jobs = {j["job_num"]: j for j in manifest["jobs"]}
    assert sorted(jobs) == [0, 1] and all(j["status"] == "completed" for j in jobs.values())
    # job 0 finished before the kill: kept, not measured again; job 1 measured once, on a fresh server
    assert (sweep / "0" / "result.json").read_bytes() == job0_bytes and jobs[0]["attempts"] == 1
    job1 = json.loads((sweep / "1" / "result.json").read_text())
    records = (sweep / "1" / "requests.jsonl").read_text().splitlines()
    assert len(records) == N + WARMUP and job1["serving"]["completed"] == N
    assert jobs[1]["server"]["reused"] is False and jobs[1]["server"]["id"] != jobs[0]["server"]["id"]
    assert job1["serving"]["server"]["id"] == jobs[1]["server"]["id"]
    new_port = int(job1["serving"]["server"]["url"].rsplit(":", 1)[1])
    assert not _servers_on(new_port) and not _servers_on(port)  # the resumed campaign stopped its server too
