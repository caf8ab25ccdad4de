"""The client against a scripted loopback server: timestamps, figures, goodput, steady window, faults."""

from __future__ import annotations

import json
import math

import pytest

from llem.config.serving import LoadConfig, SloConfig
from llem.serving import ServingClient, SteadyTracker, open_loop_schedule, serving_section, steady_rule, steady_window
from llem.serving.schedule import gamma_offsets, trace_schedule
from tests.serving.fake_server import FakeServer

LOOPBACK_S = 0.002  # the median delay from the server's write to the client's timestamp on loopback


def _run(server: FakeServer, n: int, *, warm: int = 0, tokens: int = 5, rate: float = math.inf,
         concurrency: int | None = None, prompts: list[str] | None = None, metrics: float | None = None):
    arrivals = open_loop_schedule(n, warm, tokens, rate=rate, burstiness=1.0, seed=1)
    rule = steady_rule(rate=rate, max_concurrency=concurrency, trace=False, num_requests=n, server_batch=None)
    tracker = SteadyTracker(rule)
    client = ServingClient(server.url, "fake", body={"ignore_eos": True})
    run = client.run(arrivals, prompts or [f"prompt {i}" for i in range(len(arrivals))],
                     max_concurrency=concurrency, tracker=tracker, metrics_interval_s=metrics)
    return run, rule, tracker


def test_chunk_times_and_figures_match_the_servers_own_times() -> None:
    """The server stamps every chunk as it writes it; the client's figures must equal the same formulas
    applied to those stamps, and both must show the script (60 ms to the first token, 25 ms apart)."""
    import numpy as np

    with FakeServer(ttft_s=0.06, itl_s=0.025) as server:
        run, rule, _ = _run(server, 6, warm=2, tokens=6, concurrency=2)
    by_prompt = {s.prompt: s for s in server.served}
    truth: dict[str, list[float]] = {"ttft": [], "tpot": [], "itl": [], "e2e": []}
    lags: list[float] = []
    for r in run.records:
        served = by_prompt[f"prompt {r.index}"]
        assert r.ok and r.output_tokens == 6 == r.server_output_tokens
        assert len(r.chunk_times) == len(served.chunk_s) == 6
        lags += [c - s for c, s in zip(r.chunk_times, served.chunk_s)]
        assert served.received_s >= r.send_s
        if not r.warmup:
            ttft, e2e = served.chunk_s[0] - r.send_s, served.chunk_s[-1] - r.send_s
            truth["ttft"].append(ttft)
            truth["e2e"].append(e2e)
            truth["tpot"].append((e2e - ttft) / 5)
            truth["itl"] += list(np.diff(served.chunk_s))
    assert min(lags) >= 0 and float(np.median(lags)) < LOOPBACK_S
    # every client stamp is its server stamp plus a lag in [0, max]: each figure is within max lag of the truth
    tol_ms = max(lags) * 1000 + 1e-6
    section = serving_section(run, rule, load=LoadConfig(max_concurrency=2, num_requests=6, warmup_requests=2),
                              slo=None, min_steady_seconds=0.0)
    for name, values in truth.items():
        for stat, q in (("p50", 50), ("p90", 90), ("p99", 99)):
            assert section[f"{name}_ms"][stat] == pytest.approx(np.percentile(values, q) * 1000, abs=tol_ms)
        assert section[f"{name}_ms"]["mean"] == pytest.approx(np.mean(values) * 1000, abs=tol_ms)
    script = 30.0  # ms: the scripted times, as far as a loaded shared machine lets the server keep them
    assert section["tpot_ms"]["p50"] == pytest.approx(25.0, abs=script)
    assert section["ttft_ms"]["p50"] == pytest.approx(60.0, abs=script)
    assert section["e2e_ms"]["p50"] == pytest.approx(60.0 + 5 * 25.0, abs=script)
    assert section["completed"] == 6 and section["output_tokens"] == 36
    assert section["checks"]["token_counts"]["passed"] is True


def test_goodput_on_a_server_with_two_speeds() -> None:
    class TwoSpeeds(FakeServer):
        async def _complete(self, writer, body, received):  # type: ignore[override]
            self.ttft_s = 0.15 if body["prompt"].startswith("slow") else 0.01
            await super()._complete(writer, body, received)

    prompts = ["slow a", "fast b", "fast c", "slow d", "fast e", "fast f"]
    with TwoSpeeds(itl_s=0.005) as server:
        run, rule, _ = _run(server, 6, tokens=3, concurrency=6, prompts=prompts)
    section = serving_section(run, rule, load=LoadConfig(max_concurrency=6, num_requests=6, warmup_requests=0),
                              slo=SloConfig(ttft_ms=80), min_steady_seconds=0.0)
    assert section["good_requests"] == 4
    assert section["goodput_rps"] == pytest.approx(4 / run.duration_s)


def test_live_steady_window_equals_the_records_and_the_batch_is_saturated() -> None:
    with FakeServer(ttft_s=0.02, itl_s=0.02) as server:
        run, rule, tracker = _run(server, 16, warm=2, tokens=8, concurrency=4, metrics=0.02)
    window = steady_window(run.records, rule, run.measured_start_s)
    assert (tracker.start_s, tracker.end_s) == (window.start_s, window.end_s)
    firsts = sorted(r.first_token_s for r in run.measured)
    ends = sorted(r.end_s for r in run.measured)
    assert window.start_s == firsts[3] and window.end_s == ends[16 - 4 - 1]
    section = serving_section(run, rule, load=LoadConfig(max_concurrency=4, num_requests=16), slo=None,
                              min_steady_seconds=0.1)
    assert section["checks"]["batch_saturation"]["passed"] is True, section["checks"]
    assert section["valid"] is True, section["failed"]


def test_open_loop_sends_on_schedule_and_window_ends_at_the_last_arrival() -> None:
    with FakeServer(ttft_s=0.01, itl_s=0.005) as server:
        run, rule, tracker = _run(server, 10, warm=1, tokens=3, rate=40.0)
    import numpy as np

    offsets = gamma_offsets(10, 40.0, 1.0, 1)
    late = [r.send_s - (run.measured_start_s + off) for r, off in zip(run.measured, offsets)]
    assert [r.scheduled_s - run.measured_start_s for r in run.measured] == pytest.approx(offsets)
    assert min(late) >= 0 and float(np.median(late)) < 0.005 and max(late) < 0.1
    assert run.warmup_end_s <= run.measured_start_s
    assert tracker.start_s == run.measured_start_s
    assert tracker.end_s == max(r.send_s for r in run.measured)


def test_a_server_that_dies_mid_run_turns_requests_in_flight_into_errors() -> None:
    with FakeServer(ttft_s=0.02, itl_s=0.05, die_at_s=0.3) as server:
        run, rule, _ = _run(server, 12, tokens=10, concurrency=4)
    measured = run.measured
    assert len(measured) == 12
    failed = [r for r in measured if not r.ok]
    assert failed and all(r.error for r in failed)
    assert any(r.chunk_times for r in failed)  # some were cut off mid-stream, not only refused
    section = serving_section(run, rule, load=LoadConfig(max_concurrency=4, num_requests=12), slo=None,
                              min_steady_seconds=0.0)
    assert section["errors"] == len(failed) and section["checks"]["all_answered"]["passed"] is False


def test_token_count_disagreement_is_caught() -> None:
    with FakeServer(ttft_s=0.01, itl_s=0.002, usage_offset=1) as server:
        run, rule, _ = _run(server, 4, tokens=4, concurrency=2)
    section = serving_section(run, rule, load=LoadConfig(max_concurrency=2, num_requests=4), slo=None,
                              min_steady_seconds=0.0)
    assert section["checks"]["token_counts"]["passed"] is False
    assert "server 5, client 4" in section["checks"]["token_counts"]["reason"]


def test_fixed_output_lengths_and_trace_lengths_reach_the_server() -> None:
    records = [{"offset_s": 0.0, "input_tokens": 4, "output_tokens": 2},
               {"offset_s": 0.1, "input_tokens": 4, "output_tokens": 3},
               {"offset_s": 0.15, "input_tokens": 4, "output_tokens": 5}]
    arrivals = trace_schedule(records, None, 1)
    assert [a.offset_s for a in arrivals] == [0.0, 0.0, pytest.approx(0.05)]
    with FakeServer(ttft_s=0.005, itl_s=0.001) as server:
        run = ServingClient(server.url, "fake", body={"ignore_eos": True}).run(arrivals, ["a b c d"] * 3)
    assert sorted(s.max_tokens for s in server.served) == [2, 3, 5]
    assert all(s.body["ignore_eos"] is True and s.body["stream"] is True for s in server.served)
    assert [r.output_tokens for r in run.records] == [2, 3, 5]


def test_a_transformers_style_stream_counts_tokens_and_lengths_by_generation_config() -> None:
    """transformers serve: per-request generation_config fixes the length, the closing chunk carries no token and
    the stream ends without [DONE]; a stream cut before any choice finished is still an error."""
    from llem.serving import request_body

    assert "ignore_eos" not in request_body("pytorch") and request_body("vllm")["ignore_eos"] is True
    arrivals = open_loop_schedule(4, 0, 6, rate=float("inf"), burstiness=1.0, seed=0)
    with FakeServer(ttft_s=0.01, itl_s=0.005, transformers_style=True) as server:
        client = ServingClient(server.url, "fake", body={"temperature": 0.0}, generation_config={"top_k": 5})
        run = client.run(arrivals, ["a b c"] * 4)
    assert all(r.ok and r.output_tokens == 6 == r.server_output_tokens and len(r.chunk_times) == 6
               for r in run.records), run.records
    assert all(r.finish_reason == "length" for r in run.records)
    assert all(json.loads(s.body["generation_config"]) == {"top_k": 5, "min_new_tokens": 6, "max_new_tokens": 6}
               and "ignore_eos" not in s.body for s in server.served)
    # text pieces that merge tokens: the server's count is kept, the surplus placed on the last chunk and said
    with FakeServer(ttft_s=0.01, itl_s=0.005, transformers_style=True, tokens_per_chunk=4) as server:
        merged = ServingClient(server.url, "fake", generation_config={}, text_chunks=True).run(arrivals, ["a"] * 4)
    assert all(r.ok and r.output_tokens == 6 == r.server_output_tokens and r.chunk_tokens == [1, 5]
               and r.merged_tokens == 4 for r in merged.records), merged.records
    with FakeServer(ttft_s=0.02, itl_s=0.05, die_at_s=0.15, transformers_style=True) as server:
        cut = ServingClient(server.url, "fake").run(arrivals[:1], ["a b c"])
    assert cut.records[0].status == "error" and cut.records[0].error


def test_gamma_offsets_follow_rate_and_burstiness() -> None:
    import numpy as np

    for shape in (0.5, 1.0, 4.0):
        offsets = gamma_offsets(20000, 10.0, shape, 7)
        assert offsets[-1] == pytest.approx(2000.0)  # n requests over exactly n / rate seconds, as vLLM's client
        gaps = np.diff(offsets)
        assert gaps.mean() == pytest.approx(0.1, rel=0.01)
        assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(shape), rel=0.05)
    assert gamma_offsets(5, 10.0, 1.0, 3) == gamma_offsets(5, 10.0, 1.0, 3)
    assert gamma_offsets(5, 10.0, 1.0, 3) != gamma_offsets(5, 10.0, 1.0, 4)
    assert gamma_offsets(4, math.inf, 1.0, 3) == [0.0] * 4
    assert gamma_offsets(4, 2.0, math.inf, 3) == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_build_schedule_from_the_load_settings(tmp_path) -> None:
    from llem.serving import build_schedule

    arrivals = build_schedule(LoadConfig(rate=5.0, num_requests=10, warmup_requests=2, seed=3), 16, default_seed=9)
    assert [a.warmup for a in arrivals] == [True] * 2 + [False] * 10
    assert [a.offset_s for a in arrivals[2:]] == gamma_offsets(10, 5.0, 1.0, 3)
    assert all(a.output_tokens == 16 for a in arrivals)
    assert len(build_schedule(LoadConfig(), 8, default_seed=1)) == 8 + 100
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"offset_s": 2.0, "input_tokens": 5, "output_tokens": 7}\n'
                     '{"offset_s": 1.0, "input_tokens": 6, "output_tokens": 3}\n'
                     '{"offset_s": 4.5, "input_tokens": 9, "output_tokens": 2}\n')
    replay = build_schedule(LoadConfig(trace=str(trace), warmup_requests=1), 99, default_seed=1)
    assert [(a.warmup, a.offset_s, a.input_tokens, a.output_tokens) for a in replay] == [
        (True, 0.0, 6, 3), (False, 0.0, 5, 7), (False, 2.5, 9, 2)]


def test_merged_chunks_are_counted_by_their_token_ids_and_caught_without_them() -> None:
    from llem.serving import request_body

    assert request_body("vllm") == {"ignore_eos": True, "return_token_ids": True}
    assert request_body("tensorrt", sampling={"temperature": 0.5}) == {"temperature": 0.5, "ignore_eos": True}
    with FakeServer(ttft_s=0.01, itl_s=0.01, tokens_per_chunk=3) as server:
        arrivals = open_loop_schedule(4, 0, 8, rate=math.inf, burstiness=1.0, seed=0)
        rule = steady_rule(rate=math.inf, max_concurrency=2, trace=False, num_requests=4, server_batch=None)
        with_ids = ServingClient(server.url, "fake", body=request_body("vllm")).run(arrivals, ["p"] * 4,
                                                                                   max_concurrency=2)
        without = ServingClient(server.url, "fake", body=request_body(None)).run(arrivals, ["p"] * 4,
                                                                                max_concurrency=2)
    assert all(r.chunk_tokens == [3, 3, 2] and r.output_tokens == 8 for r in with_ids.records)
    load = LoadConfig(max_concurrency=2, num_requests=4, warmup_requests=0)
    good = serving_section(with_ids, rule, load=load, slo=None, min_steady_seconds=0.0)
    assert good["checks"]["token_counts"]["passed"] is True
    assert good["tpot_ms"]["p50"] == pytest.approx((good["e2e_ms"]["p50"] - good["ttft_ms"]["p50"]) / 7, rel=0.2)
    bad = serving_section(without, rule, load=load, slo=None, min_steady_seconds=0.0)
    assert bad["checks"]["token_counts"]["passed"] is False and "server 8, client 3" in bad["checks"]["token_counts"][
        "reason"]
