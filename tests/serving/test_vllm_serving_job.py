"""`python -m llem -m scenario=serving backend=vllm load.rate=...` end to end on CPU: llem starts vLLM's OpenAI
server from the experiment's engine settings once, loads it at each load point, writes complete `serving`
sections, and stops the server when the campaign ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.backends._vllm import VLLM_CPU_BACKEND, needs_vllm

pytestmark = [pytest.mark.vllm, pytest.mark.slow, needs_vllm]

N, WARMUP, TOKENS, RATE = 16, 2, 16, 8.0


def _alive_with(argv: list[str]) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.info["cmdline"] == argv and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def test_a_vllm_load_sweep_on_cpu_starts_one_server(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_dir = sweep / "0"
    backend = [f"backend.{k}={str(v).lower() if isinstance(v, bool) else v}"
               for k, v in VLLM_CPU_BACKEND.items() if k != "name"]
    argv = [sys.executable, "-m", "llem", "-m", "scenario=serving", "backend=vllm", *backend,
            f"hydra.sweep.dir={sweep}", "num_input_prompts=8", "max_input_tokens=32", f"max_output_tokens={TOKENS}",
            "baseline.duration_seconds=1", "baseline.settle_seconds=0", f"load.rate={RATE},inf",
            f"load.num_requests={N}", f"load.warmup_requests={WARMUP}", "serving.min_steady_seconds=0.5",
            "serving.ready_timeout_seconds=300", "campaign.execution.config_gap_seconds=0",
            "campaign.execution.cycle_gap_seconds=0", "campaign.execution.cycles=1",
            "campaign.execution.warmup_prompts=0"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    log = run_dir / "server.log"
    assert done.returncode == 0, done.stderr[-4000:] + (log.read_text()[-3000:] if log.exists() else "")
    result = json.loads((run_dir / "result.json").read_text())

    # one server for both load points: the second reused it (and its prefix cache was reset after each warm-up)
    manifest = json.loads((sweep / ".state" / "campaign_manifest.json").read_text())
    starts = [j["server"] for j in manifest["jobs"]]
    assert [s["reused"] for s in starts] == [False, True] and starts[0]["id"] == starts[1]["id"]
    second = json.loads((sweep / "1" / "result.json").read_text())
    assert second["model_reused"] is True and second["serving"]["completed"] == N
    assert second["serving"]["steady"]["unavailable_reason"] is None
    for r in (result, second):
        assert r["serving"]["server"]["prefix_cache_reset"]["passed"] is True, r["serving"]["server"]
    assert (sweep / "1" / "server.log").stat().st_size > 0  # the server's lines while the second job ran
    s = result["serving"]
    assert s is not None and result["config"]["scenario"] == "serving"

    # the server llem started: vLLM's API server with the experiment's engine settings, stopped at the end
    server = s["server"]
    assert server["started_by_llem"] is True and "vllm.entrypoints.openai.api_server" in server["argv"]
    for flag in ("--enforce-eager", "--dtype", "float32", "--max-num-seqs", "4", "--max-model-len", "256"):
        assert flag in server["argv"], server["argv"]
    assert server["ready_s"] > 0 and log.stat().st_size > 0
    assert _alive_with(server["argv"]) == []

    # every request answered with the fixed length; server and client counts agree
    assert s["requests"] == N and s["completed"] == N and s["errors"] == 0
    assert s["output_tokens"] == N * TOKENS == result["output_tokens"]
    records = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert len(records) == N + WARMUP
    measured = [r for r in records if not r["warmup"]]
    assert all(r["status"] == "ok" and r["output_tokens"] == r["server_output_tokens"] == TOKENS for r in measured)
    assert s["checks"]["all_answered"]["passed"] is True and s["checks"]["token_counts"]["passed"] is True

    # open loop: the steady window runs from the end of the warm-up to the last arrival, inside the run
    st = s["steady"]
    assert s["rule"] == "open" and st["unavailable_reason"] is None
    sends = [r["send_s"] for r in measured]
    warm_end = max(r["end_s"] for r in records if r["warmup"])
    assert warm_end <= st["start_s"] <= min(sends) and st["end_s"] == pytest.approx(max(sends))
    assert st["end_s"] <= max(r["end_s"] for r in measured)
    inside = sum(n for r in measured for t, n in zip(r["chunk_times"], r["chunk_tokens"])
                 if st["start_s"] <= t <= st["end_s"])
    assert st["output_tokens"] == inside > 0
    assert s["checks"]["steady_window"]["value"] == pytest.approx(st["seconds"])

    # figures present and consistent (a tiny model's chunks can arrive in one read: TPOT and ITL may be 0)
    for key in ("ttft_ms", "e2e_ms"):
        assert all(s[key][p] is not None and s[key][p] > 0 for p in ("mean", "p50", "p90", "p99")), key
    for key in ("tpot_ms", "itl_ms"):
        assert all(s[key][p] is not None and s[key][p] >= 0 for p in ("mean", "p50", "p90", "p99")), key
    assert s["e2e_ms"]["p50"] >= s["ttft_ms"]["p50"]
    assert s["e2e_ms"]["mean"] == pytest.approx(s["ttft_ms"]["mean"] + (TOKENS - 1) * s["tpot_ms"]["mean"])
    assert s["valid"] is True and result["verdict"]["status"] != "fail", (s["checks"], result["verdict"])
    assert s["output_tokens_per_s"] == pytest.approx(s["requests_per_s"] * TOKENS)
    # no energy source on this machine: the energy figures are null with a reason, never 0
    assert s["energy"]["j_per_output_token"] is None and s["energy"]["unavailable_reason"]
