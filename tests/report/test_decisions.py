"""Frontiers, the cheapest configuration meeting a target, campaign comparison, carbon and cost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llem.report.carbon import BadFactor, Factors, per_config
from llem.report.compare import compare_frames, welch
from llem.report.frontier import frontiers, pareto_mask
from llem.report.stats import group_stats
from llem.report.target import BadTarget, cheapest_meeting, parse_targets
from tests.report.frames import hand_frame


def _brute_force(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n = len(x)
    out = np.ones(n, dtype=bool)
    for i in range(n):
        if np.isnan(x[i]) or np.isnan(y[i]):
            out[i] = False
            continue
        dominated = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        out[i] = not dominated.any()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frontier_equals_brute_force_on_10000_random_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # rounded so that equal x, equal y and identical points all occur; a few NaN
    x = np.round(rng.gamma(2.0, 50.0, 10_000), 0)
    y = np.round(1.0 / (1.0 + x) + rng.exponential(0.02, 10_000), 3)
    x[rng.integers(0, 10_000, 20)] = np.nan
    got = pareto_mask(x, y)
    assert got.sum() > 3
    assert np.array_equal(got, _brute_force(x, y))
    # maximising x (throughput) is the same as minimising -x
    assert np.array_equal(pareto_mask(x, y, x_lower=False), _brute_force(-x, y))


def test_frontier_marks_configurations_and_leaves_out_failed_results() -> None:
    frame = hand_frame()
    found = {f.x: f for f in frontiers(frame)}
    assert set(found) >= {"ttft_ms_p50", "ttft_ms_p99", "itl_ms_p99", "e2e_ms_p99", "throughput_tokens_per_s"}
    through = found["throughput_tokens_per_s"]
    assert len(through.points) == 6 and through.left_out_fail == 0
    # vllm batch 16: highest throughput and lowest energy per token dominates everything else
    assert list(through.optimal["config_hash"]) == ["vl00000000000016"]
    frame.loc[frame["config_hash"] == "vl00000000000016", "verdict"] = "fail"
    through = {f.x: f for f in frontiers(frame)}["throughput_tokens_per_s"]
    assert through.left_out_fail == 3 and "vl00000000000016" not in set(through.points["config_hash"])
    assert list(through.optimal["config_hash"]) == ["py00000000000016"]  # the next best on both axes


def test_cheapest_configuration_under_targets() -> None:
    frame = hand_frame()
    targets = parse_targets(["ttft_p99_ms=40", "tpot_p99_ms=20"])
    answer = cheapest_meeting(frame, targets)
    # itl p99 = 9 sqrt(batch): batch 16 gives 36 ms (fails), batch 4 gives 18 ms
    assert answer.best is not None and answer.best.config_hash == "vl00000000000004"
    low, high = answer.best.energy_ci  # type: ignore[misc]
    assert low < answer.best.energy_mean < high  # type: ignore[operator]
    assert [c.config_hash for c in answer.runners_up] == ["py00000000000004", "vl00000000000001", "py00000000000001"]
    assert answer.fastest is not None and answer.fastest.figures["ttft_ms_p99"] <= answer.best.figures["ttft_ms_p99"]
    assert answer.given_up["tpot_p99_ms"] == pytest.approx(18.0 - 9.0)
    assert "vllm · batch_size=4" in answer.summary()


def test_targets_without_energy_list_what_meets_them() -> None:
    frame = hand_frame()
    frame["energy_per_output_token_j"] = np.nan
    answer = cheapest_meeting(frame, {"tpot_p99_ms": 20.0})
    assert answer.best is None and not answer.energy_measured
    assert sorted(c.config_hash for c in answer.meeting) == sorted(
        ["py00000000000001", "py00000000000004", "vl00000000000001", "vl00000000000004"]
    )
    assert "Energy was not measured" in answer.summary()


def test_no_configuration_meets_impossible_targets() -> None:
    answer = cheapest_meeting(hand_frame(), {"ttft_p99_ms": 1.0})
    assert answer.best is None and answer.meeting == [] and answer.summary().startswith("No configuration meets")


@pytest.mark.parametrize("spec", ["ttft_p99=200", "ttft_p99_ms", "ttft_p99_ms=fast", "ttft_p99_ms=-1"])
def test_bad_targets_are_refused_with_the_spec(spec: str) -> None:
    with pytest.raises(BadTarget, match="--slo"):
        parse_targets([spec])


def _campaign(energy: float, spread: float, seed: int, n: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = hand_frame()
    frame = frame[frame["cycle"] == 0].copy()
    rows = []
    for cycle in range(n):
        copy = frame.copy()
        copy["cycle"] = cycle
        copy["energy_per_output_token_j"] = energy * (1 + spread * rng.standard_normal(len(copy)))
        rows.append(copy)
    return pd.concat(rows, ignore_index=True)


def test_comparison_finds_a_real_shift_and_not_one_inside_the_noise() -> None:
    before = _campaign(1.0, 0.01, seed=1)
    after = _campaign(0.9, 0.01, seed=2)  # a 10 % drop, 1 % noise
    diffs = [d for d in compare_frames(before, after) if d.metric == "energy_per_output_token_j"]
    assert len(diffs) == 6 and all(d.significant for d in diffs)
    assert all(d.ci_high < 0 for d in diffs)
    assert all(d.relative == pytest.approx(-0.1, abs=0.03) for d in diffs)
    same = _campaign(1.0, 0.05, seed=3)
    noise = _campaign(1.0 * 1.002, 0.05, seed=4)  # 0.2 % shift under 5 % noise
    diffs = [d for d in compare_frames(same, noise) if d.metric == "energy_per_output_token_j"]
    assert len(diffs) == 6 and not any(d.significant for d in diffs)


def test_welch_interval_matches_scipy() -> None:
    from scipy import stats

    a, b = [1.0, 1.2, 0.9, 1.1], [1.5, 1.7, 1.4, 1.9, 1.6]
    diff, low, high, df = welch(a, b)
    t = stats.ttest_ind(b, a, equal_var=False)
    assert diff == pytest.approx(np.mean(b) - np.mean(a))
    assert t.df == pytest.approx(df)
    ci = t.confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert np.isnan(welch([1.0], [2.0, 3.0])[1])


def test_carbon_and_cost_per_thousand_tokens_and_requests() -> None:
    frame = hand_frame()
    factors = Factors.from_values(carbon=400.0, pue=1.5, price=0.2)
    table = per_config(frame, factors)
    row = table[table["config_hash"] == "py00000000000001"].iloc[0]
    energy = np.mean([0.8 * (1 + 0.03 * c) for c in range(3)])
    kwh = energy * 1000 * 1.5 / 3.6e6
    assert row["kwh_per_1k_tokens"] == pytest.approx(kwh)
    assert row["gco2e_per_1k_tokens"] == pytest.approx(kwh * 400)
    assert row["cost_per_1k_tokens"] == pytest.approx(kwh * 0.2)
    # adjusted energy 100 x energy over 1 request per window
    assert row["gco2e_per_1k_requests"] == pytest.approx(energy * 100 * 1000 * 1.5 / 3.6e6 * 400)
    sources = " ".join(factors.sources())
    assert "400 gCO2e/kWh (command line)" in sources and "PUE 1.5 (command line)" in sources
    bare = per_config(frame, Factors.from_values(carbon=400.0))
    assert bare["gco2e_per_1k_tokens"].notna().all() and bare["cost_per_1k_tokens"].isna().all()
    assert "PUE not given" in " ".join(Factors.from_values(carbon=1.0).sources())
    with pytest.raises(BadFactor, match="--pue"):
        Factors.from_values(pue=0.5)


def test_stats_refuse_to_pool_runs_of_different_energy_scope() -> None:
    frame = hand_frame()
    one = frame["config_hash"] == "py00000000000001"
    frame.loc[one & (frame["cycle"] == 2), "energy_scope"] = "gpu"
    stats = group_stats(frame)
    row = stats[stats["config_hash"] == "py00000000000001"].iloc[0]
    assert row["energy_per_output_token_j_n"] == 0 and np.isnan(row["energy_per_output_token_j_mean"])
    assert row["throughput_tokens_per_s_n"] == 3  # other figures still pooled
    assert row["verdict"] == "warn" and "gpu+cpu+dram (2 runs), gpu (1 run)" in row["energy_not_pooled"]
    other = stats[stats["config_hash"] == "py00000000000004"].iloc[0]
    assert other["verdict"] == "pass" and pd.isna(other["energy_not_pooled"])
    assert other["energy_per_output_token_j_n"] == 3


def test_group_over_cv_threshold_warns() -> None:
    frame = hand_frame()
    stats = group_stats(frame, cv_threshold=0.01)  # energy varies 3 % per cycle
    assert (stats["verdict"] == "warn").all()
    assert stats["verdict_reasons"].str.contains("CV above the threshold: energy_per_output_token_j").all()
    frame.loc[frame["job_num"] == 0, "verdict"] = "fail"
    stats = group_stats(frame)
    first = stats[stats["config_hash"] == "py00000000000001"].iloc[0]
    assert first["verdict"] == "fail" and "1 run with verdict fail" in first["verdict_reasons"]


def test_serving_load_points_are_judged_on_their_steady_window() -> None:
    """A load point's whole-run figures (ramp-up, tail) must not decide; its steady-window figures do."""
    frame = hand_frame()
    load_point = frame["config_hash"] == "vl00000000000001"
    # whole-run figures that would put it off every frontier and past every target ...
    frame.loc[load_point, "energy_per_output_token_j"] = 99.0
    frame.loc[load_point, "ttft_ms_p99"] = 9999.0
    frame.loc[load_point, "itl_ms_p99"] = 9999.0
    # ... and steady-window figures that are the best of all
    frame.loc[load_point, "serving_ttft_ms_p50"] = 1.0
    frame.loc[load_point, "serving_ttft_ms_p99"] = 2.0
    frame.loc[load_point, "serving_tpot_ms_p99"] = 3.0
    frame.loc[load_point, "serving_output_tokens_per_s"] = 1e6
    frame.loc[load_point, "serving_j_per_output_token"] = 1e-6
    found = {f.x: f for f in frontiers(frame)}
    for axis in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p99", "throughput_tokens_per_s"):
        assert list(found[axis].optimal["config_hash"]) == ["vl00000000000001"], axis
    answer = cheapest_meeting(frame, parse_targets(["ttft_p99_ms=5", "tpot_p99_ms=5"]))
    assert answer.best is not None and answer.best.config_hash == "vl00000000000001"
    assert [c.config_hash for c in answer.meeting] == ["vl00000000000001"]
