"""`python -m llem scenario=serving backend=pytorch` end to end on CPU: llem starts transformers' own server
(`transformers serve --continuous-batching`) with the tiny model, fixes each request's length through its
generation_config, and the server's and the client's token counts agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.slow]
pytest.importorskip("transformers.cli.serve")

N, WARMUP, TOKENS = 12, 2, 12


def test_python_m_llem_serving_on_transformers_serve(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "llem", "scenario=serving", "backend=pytorch", "model=tiny", "fp_precision=float32",
            "backend.device=cpu", f"hydra.run.dir={run_dir}", "num_input_prompts=4", "max_input_tokens=32",
            f"max_output_tokens={TOKENS}", "baseline.duration_seconds=0.5", "baseline.settle_seconds=0",
            "load.rate=inf", "load.max_concurrency=4", f"load.num_requests={N}", f"load.warmup_requests={WARMUP}",
            "serving.min_steady_seconds=0.1", "serving.ready_timeout_seconds=300"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    log = run_dir / "server.log"
    assert done.returncode == 0, done.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    result = json.loads((run_dir / "result.json").read_text())
    s = result["serving"]
    server = s["server"]
    assert "transformers.cli.transformers" in server["argv"] and "--continuous-batching" in server["argv"]
    assert server["model"] == server["argv"][server["argv"].index("serve") + 1]  # requests name the loaded path
    # every request answered at the fixed length, counted alike by the server (usage) and the client (chunks)
    assert s["requests"] == N and s["completed"] == N and s["errors"] == 0
    records = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" and r["output_tokens"] == r["server_output_tokens"] == TOKENS for r in records)
    assert s["checks"]["token_counts"]["passed"] is True and s["output_tokens"] == N * TOKENS
    assert s["ttft_ms"]["p50"] > 0 and s["e2e_ms"]["p50"] >= s["ttft_ms"]["p50"]
    assert "Uvicorn running" in log.read_text()
    for proc in psutil.process_iter(["cmdline"]):  # stopped when the run ended
        try:
            assert proc.info["cmdline"] != server["argv"] or proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
