"""Against a real vLLM OpenAI server on CPU (the tiny model): the server process, llem's client, and
vLLM's own benchmark client as an independent reference for the figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import urllib.request
import pytest

from llem.config.serving import LoadConfig
from llem.serving import ServingClient, SteadyTracker, open_loop_schedule, request_body, serving_section, steady_rule
from llem.serving.server import ServerProcess, free_port, vllm_server_argv
from tests.backends._vllm import engine_children, needs_vllm

pytestmark = [pytest.mark.vllm, pytest.mark.slow, needs_vllm]

NAME = "tiny"
MAX_NUM_SEQS = 4
OUTPUT_TOKENS = 16
TTFT_FLOOR_MS = 1.5  # the smallest TTFT difference the client comparison can resolve here
ENGINE_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", "256",
               "--seed", "0"]
PROMPTS = [f"Request {i}: tell me about the weather in city number {i} and the roads there." for i in range(64)]

# vLLM's benchmark client (the code behind `vllm bench serve`), called as a module in its own process.
VLLM_BENCH = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from llem.config import ModelConfig
    from llem.models.resolve import resolve_model_path

    return Path(resolve_model_path(ModelConfig(name="builtin:tiny")))


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One vLLM server for the module; when it is stopped, no process of it may be left."""
    before = {p.pid for p in engine_children()}  # whatever earlier tests of this process left is not ours
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    argv = vllm_server_argv(str(model_dir), port, served_name=NAME, engine_args=ENGINE_ARGS)
    proc = ServerProcess(argv, port=port, log_path=log, env=env, ready_timeout_s=300)
    with proc:
        yield proc
    assert not proc.alive()
    assert engine_children(ignore=before, settle_s=10) == []  # the engine's own workers went with it
    assert log.stat().st_size > 0  # its output reached the log


def test_server_process_serves_and_streams(server: ServerProcess) -> None:
    """Up via /health, and streams; that it leaves no process when stopped is the fixture's last check."""
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as health:
        assert health.status == 200
    arrivals = open_loop_schedule(2, 0, 4, rate=float("inf"), burstiness=1.0, seed=0)
    run = ServingClient(server.url, NAME, body=request_body("vllm")).run(arrivals, PROMPTS[:2])
    assert all(r.ok and r.output_tokens == 4 == r.server_output_tokens for r in run.records)


def test_closed_loop_on_vllm_reads_running_requests_and_counts_agree(server: ServerProcess) -> None:
    """The saturation check reads the server's own running requests; whether the batch really stays full
    depends on the machine (on a shared 2-core one the API server and the client wait for a core)."""
    n, tokens = 20, 128
    arrivals = open_loop_schedule(n, 2, tokens, rate=float("inf"), burstiness=1.0, seed=0)
    rule = steady_rule(rate=float("inf"), max_concurrency=MAX_NUM_SEQS, trace=False, num_requests=n,
                       server_batch=MAX_NUM_SEQS)
    client = ServingClient(server.url, NAME, body=request_body("vllm", sampling={"temperature": 0.0}))
    run = client.run(arrivals, PROMPTS[: len(arrivals)], max_concurrency=MAX_NUM_SEQS, tracker=SteadyTracker(rule),
                     metrics_interval_s=0.05)
    section = serving_section(run, rule, load=LoadConfig(max_concurrency=MAX_NUM_SEQS, num_requests=n,
                                                         warmup_requests=2), slo=None, min_steady_seconds=0.0)
    assert section["completed"] == n and section["output_tokens"] == n * tokens
    assert section["checks"]["token_counts"]["passed"] is True, section["checks"]["token_counts"]
    saturation = section["checks"]["batch_saturation"]
    steady = section["steady"]
    inside = [v for t, v in zip(run.metrics.times, run.metrics.running) if steady["start_s"] <= t <= steady["end_s"]]
    assert inside, (run.metrics, steady)  # the value comes from the server's own /metrics
    assert saturation["value"] == pytest.approx(sum(inside) / len(inside))
    assert 0 <= saturation["value"] <= MAX_NUM_SEQS and saturation["required"] == pytest.approx(0.8 * MAX_NUM_SEQS)
    assert saturation["passed"] is (saturation["value"] >= 0.8 * MAX_NUM_SEQS)
    assert section["steady"]["output_tokens"] > 0


# llem's client, in its own process like vLLM's, so that both clients run under the same conditions.
LLEM_CLIENT = (
    "import json, sys\n"
    "from llem.config.serving import LoadConfig\n"
    "from llem.serving import ServingClient, open_loop_schedule, request_body, serving_section, steady_rule\n"
    "url, name, n, rate, seed, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), "
    "int(sys.argv[5]), int(sys.argv[6])\n"
    "prompts = json.loads(sys.stdin.read())\n"
    "arrivals = open_loop_schedule(n, 0, tokens, rate=rate, burstiness=1.0, seed=seed)\n"
    "run = ServingClient(url, name, body=request_body('vllm', sampling={'repetition_penalty': 1.0}))"
    ".run(arrivals, prompts)\n"
    "rule = steady_rule(rate=rate, max_concurrency=None, trace=False, num_requests=n, server_batch=None)\n"
    "s = serving_section(run, rule, load=LoadConfig(rate=rate, num_requests=n, warmup_requests=0), slo=None, "
    "min_steady_seconds=0.0)\n"
    "print(json.dumps(s))\n"
)


def _llem_client(server: ServerProcess, n: int, rate: float, seed: int) -> dict[str, float]:
    argv = [sys.executable, "-c", LLEM_CLIENT, server.url, NAME, str(n), str(rate), str(seed), str(OUTPUT_TOKENS)]
    done = subprocess.run(argv, input=json.dumps(PROMPTS[:n]), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads(done.stdout.strip().splitlines()[-1])
    assert s["completed"] == n, s["checks"]["all_answered"]
    return {"ttft": s["ttft_ms"]["p50"], "tpot": s["tpot_ms"]["p50"], "itl": s["itl_ms"]["p50"],
            "out_tps": s["output_tokens_per_s"]}


def _vllm_client(server: ServerProcess, model_dir: Path, prompts: Path, out: Path, n: int, rate: float, seed: int
                 ) -> dict[str, float]:
    argv = [sys.executable, "-c", VLLM_BENCH, "--backend", "vllm", "--base-url", server.url,
            "--endpoint", "/v1/completions", "--model", NAME, "--tokenizer", str(model_dir),
            "--dataset-name", "custom", "--dataset-path", str(prompts), "--custom-output-len", str(OUTPUT_TOKENS),
            "--skip-chat-template", "--num-prompts", str(n), "--request-rate", str(rate), "--burstiness", "1",
            "--ignore-eos", "--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50", "--save-result", "--result-dir", str(out.parent),
            "--result-filename", out.name, "--disable-tqdm"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["completed"] == n
    return {"ttft": res["median_ttft_ms"], "tpot": res["median_tpot_ms"], "itl": res["median_itl_ms"],
            "out_tps": res["output_throughput"]}


def test_llem_and_vllm_clients_agree_on_the_same_server(server: ServerProcess, model_dir: Path,
                                                        tmp_path: Path) -> None:
    """Same server, prompts, output lengths and rate; the two clients alternate; medians within 10 %."""
    n, rate = 24, 4.0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:n]))
    ours, theirs = [], []

    def rounds(first: int, count: int) -> dict[str, tuple[float, float]]:
        for k in range(first, first + count):
            ours.append(_llem_client(server, n, rate, seed=k))
            theirs.append(_vllm_client(server, model_dir, prompts, tmp_path / f"vllm{k}.json", n, rate, seed=k))
        return {key: (median(r[key] for r in ours), median(r[key] for r in theirs))
                for key in ("ttft", "tpot", "itl", "out_tps")}

    def close(key: str, a: float, b: float) -> bool:
        # 10 %; for TTFT (about 10 ms for the tiny model here) at least 1.5 ms: each client adds its own
        # processing to its first-token stamp, and vLLM's heavier client adds about 1 ms on these two cores
        return a == pytest.approx(b, rel=0.10, abs=TTFT_FLOOR_MS if key == "ttft" else 0.0)

    def agree(report: dict[str, tuple[float, float]]) -> bool:
        return all(close(key, a, b) for key, (a, b) in report.items())

    report = rounds(0, 4)
    if not agree(report):
        # On two shared cores the server's stream turns bursty now and then for whichever client is running;
        # four more alternating rounds, pooled with the first four, let such a burst weigh half as much.
        report = rounds(4, 4)
    print("llem vs vllm medians:", report, "\nllem runs:", ours, "\nvllm runs:", theirs)
    for key, (a, b) in report.items():
        assert close(key, a, b), f"{key}: llem {a:.3f} vs vllm {b:.3f} ({report})"
