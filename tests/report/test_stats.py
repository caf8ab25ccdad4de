"""Statistics across cycles, checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from llem.report.stats import UnknownColumn, bootstrap_ci, describe, group_stats

from .frames import hand_frame


def _frame() -> pd.DataFrame:
    """Config a: throughput 10, 12, 14 (mean 12, sd 2, CV 1/6 — unstable at 0.1);
    config b: 99, 100, 101 (mean 100, sd 1, CV 0.01); config c: one cycle."""
    return pd.DataFrame(
        {
            "config_hash": ["a", "a", "a", "b", "b", "b", "c"],
            "backend": ["pytorch"] * 6 + ["vllm"],
            "batch": [1, 1, 1, 8, 8, 8, 1],
            "model_reused": [False, True, True, False, True, True, False],
            "energy_per_output_token_j": [0.5, 0.5, 0.5, np.nan, np.nan, np.nan, 0.2],
            "throughput_tokens_per_s": [10.0, 12.0, 14.0, 99.0, 100.0, 101.0, 50.0],
            "ttft_ms_p50": [1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 9.0],
            "itl_ms_p50": [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 3.0],
        }
    )


def test_mean_std_cv_by_hand() -> None:
    s = describe([10.0, 12.0, 14.0])
    assert s.n == 3 and s.mean == pytest.approx(12.0)
    # sample sd: sqrt(((10-12)^2 + 0 + (14-12)^2) / (3 - 1)) = sqrt(4) = 2
    assert s.std == pytest.approx(2.0) and s.cv == pytest.approx(2.0 / 12.0)
    assert 10.0 <= s.ci_low <= 12.0 <= s.ci_high <= 14.0
    four = describe([1.0, 2.0, 3.0, 4.0])  # sd = sqrt(5/3)
    assert four.std == pytest.approx(math.sqrt(5.0 / 3.0)) and four.cv == pytest.approx(math.sqrt(5.0 / 3.0) / 2.5)


def test_nulls_are_ignored_and_one_value_has_no_spread() -> None:
    s = describe([3.0, None, float("nan"), 5.0])
    assert s.n == 2 and s.mean == pytest.approx(4.0) and s.std == pytest.approx(math.sqrt(2.0))
    one = describe([7.0])
    assert one.n == 1 and one.mean == 7.0
    assert all(math.isnan(v) for v in (one.std, one.cv, one.ci_low, one.ci_high))
    none = describe(pd.Series([None, None], dtype="Float64"))
    assert none.n == 0 and math.isnan(none.mean)


def test_bootstrap_is_seeded_percentile_of_resampled_means() -> None:
    values = np.array([10.0, 12.0, 14.0, 11.0, 19.0])
    ci = bootstrap_ci(values, n_resamples=1000, confidence=0.95, seed=7)
    assert ci == bootstrap_ci(values, n_resamples=1000, confidence=0.95, seed=7)
    assert ci != bootstrap_ci(values, n_resamples=1000, confidence=0.95, seed=8)
    # the definition, spelled out: resample with replacement, take the 2.5th and 97.5th percentile of means
    rng = np.random.default_rng(7)
    means = values[rng.integers(0, 5, size=(1000, 5))].mean(axis=1)
    assert ci == pytest.approx((np.quantile(means, 0.025), np.quantile(means, 0.975)))
    assert ci[0] < values.mean() < ci[1]
    narrow = bootstrap_ci(values, confidence=0.5, seed=7)
    assert ci[0] <= narrow[0] <= narrow[1] <= ci[1]
    assert bootstrap_ci(np.array([3.0, 3.0, 3.0])) == (3.0, 3.0)


def test_group_stats_by_configuration() -> None:
    stats = group_stats(_frame(), seed=1).set_index("config_hash")
    assert list(stats.index) == ["a", "b", "c"] and list(stats["cycles"]) == [3, 3, 1]
    assert stats.loc["a", "batch"] == 1 and stats.loc["c", "backend"] == "vllm"  # swept values carried
    a, b, c = stats.loc["a"], stats.loc["b"], stats.loc["c"]
    assert a["throughput_tokens_per_s_mean"] == pytest.approx(12.0)
    assert a["throughput_tokens_per_s_std"] == pytest.approx(2.0)
    assert a["throughput_tokens_per_s_cv"] == pytest.approx(1 / 6)
    assert a["throughput_tokens_per_s_ci_low"] < 12.0 < a["throughput_tokens_per_s_ci_high"]
    assert bool(a["throughput_tokens_per_s_unstable"]) and bool(a["unstable"])
    # TTFT 1, 2, 3: CV 0.5 -> unstable too; energy constant: sd 0, CI collapses onto the mean
    assert bool(a["ttft_ms_p50_unstable"])
    assert a["energy_per_output_token_j_std"] == 0.0 and not a["energy_per_output_token_j_unstable"]
    assert (a["energy_per_output_token_j_ci_low"], a["energy_per_output_token_j_ci_high"]) == (0.5, 0.5)
    assert b["throughput_tokens_per_s_cv"] == pytest.approx(0.01) and not bool(b["unstable"])
    assert b["energy_per_output_token_j_n"] == 0 and math.isnan(b["energy_per_output_token_j_mean"])
    assert pd.isna(b["energy_per_output_token_j_unstable"])  # unknown, not "stable"
    assert c["throughput_tokens_per_s_mean"] == 50.0 and math.isnan(c["throughput_tokens_per_s_std"])
    assert math.isnan(c["throughput_tokens_per_s_ci_low"]) and pd.isna(c["throughput_tokens_per_s_unstable"])
    assert not bool(c["unstable"])


def test_threshold_and_seed_are_honoured() -> None:
    loose = group_stats(_frame(), cv_threshold=0.6).set_index("config_hash")
    assert not loose["unstable"].any()
    tight = group_stats(_frame(), cv_threshold=0.005).set_index("config_hash")
    assert bool(tight.loc["b", "unstable"])
    first, again = group_stats(_frame(), seed=3), group_stats(_frame(), seed=3)
    pd.testing.assert_frame_equal(first, again)


def test_group_by_splits_configurations() -> None:
    stats = group_stats(_frame(), group_by=["model_reused"])
    assert list(stats.columns[:2]) == ["config_hash", "model_reused"]
    a_warm = stats[(stats["config_hash"] == "a") & stats["model_reused"]].iloc[0]
    assert a_warm["cycles"] == 2 and a_warm["throughput_tokens_per_s_mean"] == pytest.approx(13.0)
    assert a_warm["throughput_tokens_per_s_std"] == pytest.approx(math.sqrt(2.0))
    assert len(stats) == 5
    with pytest.raises(UnknownColumn, match="no column nope"):
        group_stats(_frame(), group_by=["nope"])


def test_hand_summary_frame_with_energy() -> None:
    stats = group_stats(hand_frame())
    assert len(stats) == 6 and (stats["cycles"] == 3).all()
    # energy per token = base x (1, 1.03, 1.06): CV = 0.03 / 1.03 for every configuration
    assert np.allclose(stats["energy_per_output_token_j_cv"], 0.03 / 1.03)
    assert not stats["energy_per_output_token_j_unstable"].any()


def test_empty_frame_gives_empty_stats() -> None:
    stats = group_stats(_frame().iloc[0:0])
    assert len(stats) == 0 and "unstable" in stats.columns
