"""A serving job through the harness, against the scripted server run as its own process (no vLLM needed):
the server is started, loaded, measured and stopped, and result.json holds a complete `serving` section."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llem.config import ExperimentConfig
from llem.measure.harness import MeasurementError, run_experiment
from llem.measure.result import read_result
from llem.measure.session import BackendSession
from llem.report.collect import metric_values
from llem.serving.server import ServerProcess, free_port
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml
from tests.serving.fake_server import FakeServer

REPO = Path(__file__).resolve().parents[2]
IDLE_W, LOAD_W = 100.0, 300.0
N, B, TOKENS, WARMUP = 16, 2, 12, 2


def _experiment(**overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": {"name": "builtin:tiny"},
        "scenario": "serving",
        "backend": {"name": "vllm", "max_num_seqs": B},
        "num_input_prompts": 4,
        "max_input_tokens": 32,
        "max_output_tokens": TOKENS,
        "baseline": {"duration_seconds": 0.2, "settle_seconds": 0.0},
        "energy": {"include_host": False},
        "load": {"max_concurrency": B, "num_requests": N, "warmup_requests": WARMUP},
        "serving": {"min_steady_seconds": 0.5, "metrics_interval_seconds": 0.05},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


class ScriptedServer(ServerProcess):
    """The scripted server as a child process; remembers when it became ready and what it was built from."""

    built: list[ScriptedServer] = []

    def __init__(self, experiment: ExperimentConfig, log_path: Path, argv: list[str] | None = None) -> None:
        port = free_port()
        argv = argv or [sys.executable, "-m", "tests.serving.fake_server", "--port", str(port), "--ttft-s", "0.03",
                        "--itl-s", "0.02"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        super().__init__(argv, port=port, log_path=log_path, env=env, ready_timeout_s=30, stop_timeout_s=5)
        self.experiment = experiment
        self.ready_at: float | None = None
        ScriptedServer.built.append(self)

    def start(self) -> ScriptedServer:
        super().start()
        self.ready_at = time.monotonic()
        return self


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_serving_job_starts_measures_and_leaves_its_server_to_the_session(tmp_path: Path) -> None:
    ScriptedServer.built.clear()
    step_at = [float("inf")]  # the fake GPU draws LOAD_W from shortly after the baseline on

    def power_w(t: float) -> float:
        return LOAD_W if t >= step_at[0] else IDLE_W

    def energy_mj(t: float) -> int:
        return int(1000 * (IDLE_W * t + (LOAD_W - IDLE_W) * max(0.0, t - step_at[0])))

    class SteppedServer(ScriptedServer):
        def start(self) -> SteppedServer:
            super().start()
            assert self.ready_at is not None
            step_at[0] = self.ready_at + 0.2 + 0.15  # after the baseline (0.2 s), before the load
            return self

    nv = FakeNvml([FakeGpu(energy_mj=energy_mj, power_mw=lambda t: int(1000 * power_w(t)))], clock=time.monotonic)
    session = BackendSession()
    result = run_experiment(_experiment(), tmp_path, session, nvml_module=nv, server_factory=SteppedServer)

    (server,) = ScriptedServer.built
    assert server.alive() and session.running_server() is server  # kept for the next job with its settings
    session.release()  # what a worker does when it stops
    assert not server.alive() and server.pid is not None and _group_gone(server.pid)
    assert (tmp_path / "server.log").read_text().startswith("fake server listening on")
    on_disk = read_result(tmp_path / "result.json")
    assert on_disk == result
    s = on_disk.serving
    assert s is not None
    # every measured request answered, with the fixed output length, and the tokens add up
    assert s["requests"] == N and s["completed"] == N and s["errors"] == 0
    assert s["output_tokens"] == N * TOKENS == result.output_tokens and result.num_prompts == N
    records = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert len(records) == N + WARMUP and sum(r["warmup"] for r in records) == WARMUP
    assert all(r["status"] == "ok" and r["server_output_tokens"] == r["output_tokens"] == TOKENS for r in records)
    # the steady window: closed loop with B, inside the measured phase, holding only the tokens inside it
    st = s["steady"]
    assert s["rule"] == "closed" and s["concurrency"] == B and st["unavailable_reason"] is None
    measured = [r for r in records if not r["warmup"]]
    first_send = min(r["send_s"] for r in measured)
    last_end = max(r["end_s"] for r in measured)
    assert first_send <= st["start_s"] < st["end_s"] <= last_end
    assert st["seconds"] == pytest.approx(st["end_s"] - st["start_s"])
    inside = sum(n for r in measured for t, n in zip(r["chunk_times"], r["chunk_tokens"])
                 if st["start_s"] <= t <= st["end_s"])
    assert st["output_tokens"] == inside and 0 < inside < N * TOKENS
    assert step_at[0] < st["start_s"], "the power step must begin before the steady window"
    # energy: the baseline read idle power with the server up, the window the step above it
    e = s["energy"]
    assert result.energy.baseline_power_w == pytest.approx(IDLE_W, rel=0.01)
    expected = (LOAD_W - IDLE_W) * st["seconds"] / inside
    assert e["j_per_output_token"] == pytest.approx(expected, rel=0.03)
    assert e["j_per_request"] == pytest.approx(e["j_per_output_token"] * TOKENS)
    assert e["run"]["energy_above_idle_j"] > e["steady_energy_above_idle_j"] > 0
    assert result.energy.adjusted_j == pytest.approx(e["run"]["energy_above_idle_j"])
    # checks, all passed; the verdict reads them
    assert s["valid"] is True and s["failed"] == [], s["checks"]
    assert set(s["checks"]) == {"steady_window", "all_answered", "token_counts", "batch_saturation"}
    assert result.verdict is not None
    assert "serving_check_failed" not in json.dumps(result.verdict.model_dump())
    assert s["server"]["started_by_llem"] is True and s["server"]["log"] == "server.log"
    assert s["server"]["reused"] is False and s["server"]["id"] and result.model_reused is False
    assert result.model_load_s is not None and result.model_load_s > 0
    assert result.latency.ttft_ms.count == N and result.latency.itl_ms.count == N * (TOKENS - 1)
    row = metric_values(on_disk)  # summary.csv's serving columns
    assert row["serving_j_per_output_token"] == e["j_per_output_token"] and row["serving_valid"] is True
    assert row["serving_tpot_ms_p99"] == s["tpot_ms"]["p99"] and row["serving_steady_s"] == st["seconds"]


def test_failed_checks_fail_the_verdict(tmp_path: Path) -> None:
    """A steady window shorter than serving.min_steady_seconds: figures kept, the check and the verdict fail."""
    exp = _experiment(serving={"min_steady_seconds": 600.0, "metrics_interval_seconds": 0.05},
                      energy={"source": "none"})
    result = run_experiment(exp, tmp_path, BackendSession(), server_factory=ScriptedServer)
    s = result.serving
    assert s is not None and s["completed"] == N and s["valid"] is False and "steady_window" in s["failed"]
    assert "serving.min_steady_seconds" in s["checks"]["steady_window"]["reason"]
    verdict = result.verdict.model_dump()  # type: ignore[union-attr]
    assert verdict["status"] == "fail" and "serving_check_failed" in json.dumps(verdict)


def test_a_server_that_never_gets_ready_fails_the_job_with_its_log(tmp_path: Path) -> None:
    ScriptedServer.built.clear()
    crash = [sys.executable, "-c", "import sys; print('engine init failed: no memory for the KV cache'); sys.exit(3)"]

    def factory(experiment: ExperimentConfig, log_path: Path) -> ScriptedServer:
        return ScriptedServer(experiment, log_path, argv=crash)

    session = BackendSession()
    with pytest.raises(MeasurementError) as info:
        run_experiment(_experiment(energy={"source": "none"}), tmp_path, session, server_factory=factory)
    text = str(info.value)
    assert "exited with code 3" in text and "no memory for the KV cache" in text
    assert not (tmp_path / "result.json").exists()
    (server,) = ScriptedServer.built
    assert not server.alive() and session.running_server() is None
    # the next job, in the same worker, gets a fresh server of its own
    result = run_experiment(_experiment(energy={"source": "none"}), tmp_path / "next", session,
                            server_factory=ScriptedServer)
    try:
        assert len(ScriptedServer.built) == 2 and ScriptedServer.built[1].alive()
        assert result.serving is not None and result.serving["completed"] == N
        assert result.serving["server"]["reused"] is False and session.server_starts == 1
    finally:
        session.release()


def test_a_running_server_at_serving_url_is_loaded_and_its_energy_is_null_with_the_reason(tmp_path: Path) -> None:
    with FakeServer(ttft_s=0.02, itl_s=0.01) as server:
        exp = _experiment(serving={"url": server.url, "min_steady_seconds": 0.1, "metrics_interval_seconds": 0.05})
        result = run_experiment(exp, tmp_path, BackendSession(), server_factory=None)
        assert len(server.served) == N + WARMUP
    s = result.serving
    assert s is not None and s["completed"] == N and s["server"]["started_by_llem"] is False
    assert s["server"]["model"] == "fake" and s["server"]["argv"] is None
    assert not (tmp_path / "server.log").exists()
    assert s["energy"]["j_per_output_token"] is None
    assert "serving.gpus" in s["energy"]["unavailable_reason"]
    assert result.energy.total_j is None and "serving.gpus" in (result.energy.unavailable_reason or "")


def _completions_in(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.startswith("completion "))


def test_load_points_with_equal_server_settings_share_one_server(tmp_path: Path) -> None:
    """Three load points, one server: the second and third reuse it, its prefix cache is reset after each
    warm-up, each job's log holds the server's own lines for that job; a changed engine setting starts a new
    server and stops the old one."""
    ScriptedServer.built.clear()
    session = BackendSession()
    first, second = tmp_path / "1", tmp_path / "2"
    try:
        a = run_experiment(_experiment(energy={"source": "none"}), first, session, server_factory=ScriptedServer)
        b = run_experiment(_experiment(energy={"source": "none"}, load={"rate": 50.0, "num_requests": N,
                                                                          "warmup_requests": WARMUP}),
                           second, session, server_factory=ScriptedServer)
        assert len(ScriptedServer.built) == 1 and session.server_starts == 1
        sa, sb = a.serving["server"], b.serving["server"]  # type: ignore[index]
        assert sa["reused"] is False and sb["reused"] is True and sa["id"] == sb["id"] and sa["pid"] == sb["pid"]
        assert b.model_reused is True and b.model_load_s is None and a.model_load_s is not None
        # each job's log: the server's lines while that job ran, its reset and all its requests
        for job in (first, second):
            log = job / "server.log"
            assert _completions_in(log) == N + WARMUP
            assert sum(line.startswith("reset_prefix_cache") for line in log.read_text().splitlines()) == 1
        for result, job in ((a, first), (b, second)):
            reset = result.serving["server"]["prefix_cache_reset"]  # type: ignore[index]
            assert reset["passed"] is True and reset["path"] == "/reset_prefix_cache"
            records = [json.loads(line) for line in (job / "requests.jsonl").read_text().splitlines()]
            reset_at = float(next(line for line in (job / "server.log").read_text().splitlines()
                                  if line.startswith("reset_prefix_cache")).split()[-1])
            # after every warm-up answer, before any measured request was sent
            assert max(r["end_s"] for r in records if r["warmup"]) <= reset_at
            assert reset_at <= min(r["send_s"] for r in records if not r["warmup"])
        old = ScriptedServer.built[0]
        c = run_experiment(_experiment(energy={"source": "none"}, backend={"name": "vllm", "max_num_seqs": B + 1}),
                           tmp_path / "3", session, server_factory=ScriptedServer)
        assert len(ScriptedServer.built) == 2 and session.server_starts == 2
        assert c.serving["server"]["reused"] is False and c.serving["server"]["id"] != sa["id"]  # type: ignore[index]
        assert not old.alive() and _group_gone(old.pid)  # type: ignore[arg-type]
    finally:
        session.release()
    assert all(not s.alive() for s in ScriptedServer.built)


def test_a_server_that_died_is_not_reused(tmp_path: Path) -> None:
    ScriptedServer.built.clear()
    session = BackendSession()
    try:
        run_experiment(_experiment(energy={"source": "none"}), tmp_path / "1", session, server_factory=ScriptedServer)
        (server,) = ScriptedServer.built
        server.stop()  # it dies between jobs (as an OOM kill would end it)
        again = run_experiment(_experiment(energy={"source": "none"}), tmp_path / "2", session,
                               server_factory=ScriptedServer)
        assert len(ScriptedServer.built) == 2 and again.serving["server"]["reused"] is False  # type: ignore[index]
        assert again.serving["completed"] == N  # type: ignore[index]
    finally:
        session.release()
