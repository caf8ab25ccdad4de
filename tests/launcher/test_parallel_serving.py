"""Serving side by side on a node's GPUs: one engine server per GPU set, each on its own port, seeing only its GPU.

A real parallel campaign on 2 scripted GPUs (`nvml` below: each GPU draws its own constant power, so a job's
energy tells which GPU it was read on) with the scripted server (LLEM_SERVER_FACTORY) in place of the engine's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import pytest

from llem.plan.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
WATTS = (100.0, 300.0)  # GPU 0 and GPU 1: apart enough that a reading of the other GPU, or of both, shows
SERVER_MODULE = "tests.serving.fake_server"
ARGS = ["scenario=serving", "backend=vllm", "model=tiny", "load.rate=inf,80,40,20", "load.num_requests=32",
        "load.warmup_requests=2", "max_output_tokens=8", "num_input_prompts=4", "max_input_tokens=32",
        "serving.min_steady_seconds=0.1", "baseline.duration_seconds=0.5", "baseline.settle_seconds=0",
        "campaign.execution.config_gap_seconds=0", "campaign.execution.cycle_gap_seconds=0",
        "campaign.execution.cycles=1", "campaign.health_check.enabled=false", "hydra.launcher.parallel=true"]


def nvml() -> Any:
    """LLEM_NVML_FACTORY for this module's campaign: two GPUs, GPU i drawing WATTS[i] (counter and polled power)."""
    from tests.fakes.fake_pynvml import FakeGpu, FakeNvml

    def counter(watts: float) -> Any:
        return lambda t: int(time.monotonic() * watts * 1000)  # mJ since an arbitrary origin

    return FakeNvml([FakeGpu(energy_mj=counter(w), power_mw=int(w * 1000)) for w in WATTS])


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LLEM_NVML_FACTORY": f"{__name__}:nvml",
            "LLEM_SERVER_FACTORY": "tests.serving.scripted_factory:fake",
            "LLEM_GPU_LOCK_DIR": str(tmp_path / "gpu-locks"), "PYTHONPATH": str(REPO)}


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def _servers(lock_dir: str) -> list[psutil.Process]:
    """Processes of this campaign (told apart by its GPU lock dir) that run the scripted server, in any form."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if SERVER_MODULE in " ".join(proc.info["cmdline"] or ()) and \
                    proc.environ().get("LLEM_GPU_LOCK_DIR") == lock_dir:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _watch(campaign: subprocess.Popen[str], lock_dir: str, timeout_s: float) -> tuple[dict[int, tuple[int, str]], int]:
    """While the campaign runs: each server seen (pid -> (port, CUDA_VISIBLE_DEVICES)) and the most alive at once."""
    seen: dict[int, tuple[int, str]] = {}
    most = 0
    deadline = time.monotonic() + timeout_s
    while campaign.poll() is None:
        assert time.monotonic() < deadline, "the campaign did not finish in time"
        alive = 0
        for proc in _servers(lock_dir):
            try:
                argv, env = proc.cmdline(), proc.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if "--port" not in argv:  # it exited between the scan and this read
                continue
            alive += 1
            seen[proc.pid] = (int(argv[argv.index("--port") + 1]), env.get("CUDA_VISIBLE_DEVICES", ""))
        most = max(most, alive)
        time.sleep(0.1)
    return seen, most


@pytest.mark.slow
def test_each_gpu_gets_its_own_server_and_its_jobs_measure_side_by_side(tmp_path: Path) -> None:
    sweep, lock_dir = tmp_path / "sweep", str(tmp_path / "gpu-locks")
    campaign = subprocess.Popen([sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", *ARGS],
                                cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        seen, most_alive = _watch(campaign, lock_dir, timeout_s=300)
    finally:
        if campaign.poll() is None:
            campaign.kill()
        _, stderr = campaign.communicate()
    assert campaign.returncode == 0, stderr[-3000:]
    leftovers = [p.pid for p in _servers(lock_dir)]
    assert leftovers == [], f"servers left running after the campaign: {leftovers}"

    manifest = read_manifest(sweep / ".state" / "campaign_manifest.json")
    assert [j.status for j in manifest.jobs] == ["completed"] * 4
    results = [json.loads(Path(j.result_path or "").read_text()) for j in manifest.jobs]
    gpu_uuids = {r["placement"]["gpus"][0] for r in results}
    assert len(gpu_uuids) == 2

    # exactly two server starts, one per GPU set, on different ports; every later job on a GPU reuses its server
    starts = [j.server for j in manifest.jobs if j.server is not None and j.server["reused"] is False]
    assert len(starts) == 2 and all(j.server is not None for j in manifest.jobs)
    assert len({s["id"] for s in starts}) == 2
    assert len({urlparse(s["url"]).port for s in starts}) == 2
    by_gpu: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for result, job in zip(results, manifest.jobs, strict=True):
        by_gpu.setdefault(result["placement"]["gpus"][0], []).append((result, job))
    for uuid, jobs in by_gpu.items():
        jobs.sort(key=lambda rj: _ts(rj[0]["started_at"]))
        first = jobs[0][1].server
        assert first["reused"] is False, f"the first job on {uuid} did not start its server"
        for _, later in jobs[1:]:
            assert later.server["reused"] is True
            assert later.server["id"] == first["id"] and later.server["url"] == first["url"]
        # the server process on that port saw only this GPU set (it inherits its worker's CUDA_VISIBLE_DEVICES)
        pid = jobs[0][0]["serving"]["server"]["pid"]
        assert seen.get(pid) == (urlparse(first["url"]).port, uuid), (pid, seen)
    assert len(seen) == 2 and most_alive == 2  # both servers were up at the same time, and no third one ran

    for result, job in zip(results, manifest.jobs, strict=True):
        placement = result["placement"]
        assert placement["parallel"] is True and len(placement["gpus"]) == 1 and placement["gpus"] == job.gpus
        # energy read on the job's own GPU, and on that one only
        scope = result["energy"]["scope"]
        assert list(scope["gpu_uuids"].values()) == placement["gpus"] and scope["devices"]["gpu"] == ["gpu0"]
        watts = WATTS[placement["gpu_indices"][0]]
        run = result["serving"]["energy"]["run"]
        assert run["energy_j"] / run["seconds"] == pytest.approx(watts, rel=0.1)
        assert result["energy"]["baseline"]["per_device_w"]["gpu0"] == pytest.approx(watts, rel=0.05)

    # the two GPUs' jobs ran side by side: the first job on each overlapped the other in time
    spans = [(_ts(r["started_at"]), _ts(r["completed_at"])) for r in results]
    firsts = [min(spans[i] for i, r in enumerate(results) if r["placement"]["gpus"][0] == uuid) for uuid in by_gpu]
    (s1, e1), (s2, e2) = firsts
    assert s1 < e2 and s2 < e1, f"the GPUs' first jobs did not overlap: {firsts}"
    assert max(r["placement"]["concurrent_jobs"] for r in results) == 2
