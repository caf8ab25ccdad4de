"""Figures, steady window, energy attribution and checks on hand-made records, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from llem.config.serving import LoadConfig, SloConfig
from llem.serving.checks import run_checks
from llem.serving.client import LoadRun
from llem.serving.energy import WindowEnergy, energy_figures
from llem.serving.figures import latency_figures, stats_ms, throughput_figures
from llem.serving.metrics import MetricsSamples, parse_gauge
from llem.serving.records import OK, RequestRecord, read_records, write_records
from llem.serving.section import serving_section
from llem.serving.steady import CLOSED, OPEN, SteadyRule, SteadyTracker, steady_rule, steady_window


def rec(i: int, send: float, chunks: list[float], *, warmup: bool = False, usage: int | None = -1,
        ok: bool = True) -> RequestRecord:
    r = RequestRecord(index=i, warmup=warmup, send_s=send, chunk_times=list(chunks), chunk_tokens=[1] * len(chunks),
                      output_tokens=len(chunks), status=OK if ok else "error", error=None if ok else "boom")
    r.first_token_s = chunks[0] if chunks else None
    r.end_s = (chunks[-1] + 0.001) if chunks else send + 0.5
    r.server_output_tokens = len(chunks) if usage == -1 else usage
    return r


# Two requests: A sent at 0, chunks at 0.1, 0.2, 0.4 ; B sent at 1, chunks at 1.3, 1.35, 1.4, 1.45, 1.5
A = rec(0, 0.0, [0.1, 0.2, 0.4])
B = rec(1, 1.0, [1.3, 1.35, 1.4, 1.45, 1.5])


def test_latency_figures_match_hand_computed_values() -> None:
    figs = latency_figures([A, B])
    # TTFT: 100, 300 ms
    assert figs["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert figs["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert figs["ttft_ms"]["p90"] == pytest.approx(100 + 0.9 * 200)
    assert figs["ttft_ms"]["p99"] == pytest.approx(100 + 0.99 * 200)
    # E2E: 400, 500 ms; TPOT: (400-100)/2 = 150, (500-300)/4 = 50
    assert figs["e2e_ms"]["mean"] == pytest.approx(450.0)
    assert figs["tpot_ms"]["mean"] == pytest.approx(100.0)
    assert figs["tpot_ms"]["p90"] == pytest.approx(50 + 0.9 * 100)
    # ITL pooled: 100, 200, 50, 50, 50, 50 -> mean 83.33, median 50
    assert figs["itl_ms"]["mean"] == pytest.approx(500 / 6)
    assert figs["itl_ms"]["p50"] == pytest.approx(50.0)
    assert figs["itl_ms"]["p99"] == pytest.approx(stats_ms([0.1, 0.2, 0.05, 0.05, 0.05, 0.05])["p99"])


def test_failed_and_warmup_requests_are_left_out_of_latency_but_counted_as_errors() -> None:
    warm = rec(9, -5.0, [-4.0, -3.0], warmup=True)
    bad = rec(2, 0.5, [], ok=False)
    figs = latency_figures([A, B, warm, bad])
    assert figs["ttft_ms"]["mean"] == pytest.approx(200.0)
    tp = throughput_figures([A, B, warm, bad], 2.0, None)
    assert (tp["requests"], tp["completed"], tp["errors"], tp["output_tokens"]) == (3, 2, 1, 8)
    assert tp["requests_per_s"] == pytest.approx(1.0)
    assert tp["output_tokens_per_s"] == pytest.approx(4.0)


def test_goodput_counts_requests_that_meet_every_target() -> None:
    # A: ttft 100, tpot 150, e2e 400; B: ttft 300, tpot 50, e2e 500
    assert throughput_figures([A, B], 2.0, SloConfig(ttft_ms=150))["goodput_rps"] == pytest.approx(0.5)
    assert throughput_figures([A, B], 2.0, SloConfig(tpot_ms=100))["goodput_rps"] == pytest.approx(0.5)
    assert throughput_figures([A, B], 2.0, SloConfig(ttft_ms=150, tpot_ms=100))["good_requests"] == 0
    assert throughput_figures([A, B], 2.0, SloConfig(e2e_ms=450))["good_requests"] == 1
    assert throughput_figures([A, B], 2.0, None)["goodput_rps"] == pytest.approx(1.0)


def test_tpot_uses_the_servers_token_count() -> None:
    r = rec(0, 0.0, [0.1, 0.5], usage=5)  # two chunks carried five tokens
    assert latency_figures([r])["tpot_ms"]["mean"] == pytest.approx(400 / 4)


def _closed(n: int, b: int) -> list[RequestRecord]:
    """n requests of 4 chunks, b at a time, each slot starting when the previous request of the slot ended."""
    out = []
    for i in range(n):
        slot, wave = i % b, i // b
        send = wave * 1.0 + slot * 0.01
        out.append(rec(i, send, [send + 0.1 + 0.2 * k for k in range(4)]))
    return out


def test_closed_loop_steady_window_runs_from_b_first_tokens_to_n_minus_b_finished() -> None:
    records = _closed(12, 3)
    window = steady_window(records, SteadyRule(CLOSED, 12, 3), 0.0)
    # 3rd first token: request 2, 0.02 + 0.1; 9th finish: request 8 (wave 2, slot 2): 2.02 + 0.7 + 0.001
    assert window.start_s == pytest.approx(0.12)
    assert window.end_s == pytest.approx(2.721)
    assert window.seconds == pytest.approx(2.601)
    # finished inside: requests 0..8 (ends 0.701..2.721) -> 9
    assert window.requests == 9
    # tokens: every chunk time in [0.12, 2.721]; by hand: all of waves 0-2 except the first chunks of 0 and 1
    assert window.output_tokens == 9 * 4 - 2 + sum(1 for r in records[9:] for t in r.chunk_times if t <= 2.721)


def test_open_loop_steady_window_runs_from_warmup_end_to_the_last_arrival() -> None:
    warm = rec(0, 0.0, [0.1, 0.2], warmup=True)
    measured = [rec(1 + i, 1.0 + 0.5 * i, [1.1 + 0.5 * i, 1.2 + 0.5 * i]) for i in range(4)]
    window = steady_window([warm, *measured], SteadyRule(OPEN, 4), measured_start_s=0.9)
    assert (window.start_s, window.end_s) == (0.9, 2.5)
    assert window.output_tokens == 6  # chunks at 1.1,1.2,1.6,1.7,2.1,2.2 (2.6, 2.7 are after the last arrival)


def test_the_live_tracker_gives_the_same_window_as_the_records() -> None:
    records = _closed(10, 2)
    events = sorted([(r.send_s, "sent") for r in records] + [(r.first_token_s, "first_token") for r in records]
                    + [(r.end_s, "finished") for r in records])
    seen: list[tuple[str, str, float]] = []

    class Hooks:
        def window_started(self, name: str, t: float) -> None:
            seen.append(("start", name, t))

        def window_ended(self, name: str, t: float) -> None:
            seen.append(("end", name, t))

    tracker = SteadyTracker(SteadyRule(CLOSED, 10, 2), Hooks())
    for t, kind in events:
        getattr(tracker, kind)(t)
    window = steady_window(records, SteadyRule(CLOSED, 10, 2), 0.0)
    assert seen == [("start", "steady", window.start_s), ("end", "steady", window.end_s)]


def test_no_steady_window_when_the_rule_cannot_hold() -> None:
    assert steady_window(_closed(4, 2), SteadyRule(CLOSED, 4, 3), 0.0).unavailable_reason
    assert "concurrency" in steady_window(_closed(4, 2), SteadyRule(CLOSED, 4, None), 0.0).unavailable_reason
    all_at_once = [rec(i, 0.0, [0.1]) for i in range(3)]
    assert "at once" in steady_window(all_at_once, SteadyRule(OPEN, 3), 0.0).unavailable_reason


def test_rule_follows_the_load() -> None:
    assert steady_rule(rate=math.inf, max_concurrency=4, trace=False, num_requests=20, server_batch=8).concurrency == 4
    assert steady_rule(rate=math.inf, max_concurrency=None, trace=False, num_requests=20, server_batch=8
                       ).concurrency == 8
    assert steady_rule(rate=2.0, max_concurrency=4, trace=False, num_requests=20, server_batch=8).kind == OPEN


def test_energy_attribution_by_hand() -> None:
    records = _closed(12, 3)
    window = steady_window(records, SteadyRule(CLOSED, 12, 3), 0.0)
    figs = energy_figures(window, WindowEnergy(2.601, 300.0, 200.0), WindowEnergy(3.5, 400.0, 260.0),
                          completed=12, good=6, output_tokens=48, mean_output_tokens=4.0)
    per_token = 200.0 / window.output_tokens
    assert figs["j_per_output_token"] == pytest.approx(per_token)
    assert figs["j_per_output_token_raw"] == pytest.approx(300.0 / window.output_tokens)
    assert figs["j_per_request"] == pytest.approx(per_token * 4.0)
    assert figs["j_per_good_request"] == pytest.approx(per_token * 4.0 * 12 / 6)
    assert figs["run"]["j_per_output_token"] == pytest.approx(260.0 / 48)
    none = energy_figures(window, WindowEnergy(None, None, None, "no GPU"), WindowEnergy(None, None, None, "no GPU"),
                          completed=12, good=0, output_tokens=48, mean_output_tokens=4.0)
    assert none["j_per_output_token"] is None and none["unavailable_reason"] == "no GPU"


def test_checks_fail_with_reasons() -> None:
    records = _closed(12, 3)
    records[5].server_output_tokens = 7
    records[6].status, records[6].error = "error", "ReadError: connection closed"
    window = steady_window(records, SteadyRule(CLOSED, 12, 3), 0.0)
    metrics = MetricsSamples(times=[0.5, 1.0, 1.5, 2.0], running=[3.0, 2.0, 2.0, 1.0])  # mean 2.0 < 0.8 * 3
    out = run_checks(records, window, metrics, min_steady_seconds=30.0, saturation_fraction=0.8)
    assert out["valid"] is False
    assert set(out["failed"]) == {"steady_window", "all_answered", "token_counts", "batch_saturation"}
    assert "shorter than serving.min_steady_seconds" in out["checks"]["steady_window"]["reason"]
    assert "ReadError" in out["checks"]["all_answered"]["reason"]
    assert "server 7, client 4" in out["checks"]["token_counts"]["reason"]
    assert out["checks"]["batch_saturation"]["value"] == pytest.approx(2.0)
    good = _closed(12, 3)
    ok = run_checks(good, steady_window(good, SteadyRule(CLOSED, 12, 3), 0.0),
                    MetricsSamples(times=[1.0, 2.0], running=[3.0, 2.5]), min_steady_seconds=1.0,
                    saturation_fraction=0.8)
    assert ok["valid"] is True and ok["failed"] == []


def test_section_shape(tmp_path) -> None:
    records = _closed(12, 3)
    run = LoadRun(records, 0.0, 0.0, max(r.end_s for r in records))
    section = serving_section(run, SteadyRule(CLOSED, 12, 3), load=LoadConfig(max_concurrency=3, num_requests=12),
                              slo=SloConfig(ttft_ms=1000), min_steady_seconds=1.0)
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(section[key]) == {"mean", "p50", "p90", "p99"}
    for key in ("requests_per_s", "output_tokens_per_s", "goodput_rps", "steady", "energy", "checks", "valid"):
        assert key in section
    assert section["energy"]["j_per_output_token"] is None and section["energy"]["unavailable_reason"]
    path = write_records(tmp_path / "requests.jsonl", records)
    assert read_records(path) == records


def test_parse_running_gauge() -> None:
    text = ('# HELP vllm:num_requests_running x\nvllm:num_requests_running{model_name="m",engine="0"} 3.0\n'
            'vllm:num_requests_running{model_name="m",engine="1"} 2.0\nvllm:num_requests_running_total 9\n')
    assert parse_gauge(text) == 5.0
    assert parse_gauge("other 1\n") is None


def test_an_infinite_rate_is_valid_json_in_the_section() -> None:
    import json

    run = LoadRun([A, B], 0.0, 0.0, 2.0)
    section = serving_section(run, SteadyRule(OPEN, 2), load=LoadConfig(rate=math.inf), slo=None,
                              min_steady_seconds=0.0)
    assert section["load"]["rate"] == "Infinity"
    json.dumps(section, allow_nan=False)
