"""Statistics across cycles, checked against values worked out by hand and against independent references
(SciPy's own t interval, the bootstrap's definition spelled out here, coverage simulations with fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from llem.report.stats import (
    DEFAULT_BOOTSTRAP_MIN_N,
    DEFAULT_RESAMPLES,
    UnknownColumn,
    bootstrap_ci,
    check_group_by,
    describe,
    group_stats,
    resolve_group_by,
    t_ci,
)

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


def _scipy_t(values: object, confidence: float = 0.95) -> tuple[float, float]:
    """The reference t interval: SciPy's `t.interval` around the mean with the standard error `sem`
    (another code path than llem's `t.ppf` and `std`)."""
    array = np.asarray(values, dtype=float)
    low, high = scipy_stats.t.interval(confidence, df=array.size - 1, loc=array.mean(), scale=scipy_stats.sem(array))
    return float(low), float(high)


def _reference_bootstrap(values: object, seed: int, n_resamples: int = DEFAULT_RESAMPLES) -> tuple[float, float]:
    """The percentile bootstrap by its definition: resample with replacement from a generator seeded
    with `seed`, take the 2.5th and 97.5th percentiles of the resampled means."""
    array = np.asarray(values, dtype=float)
    picks = np.random.default_rng(seed).integers(0, array.size, size=(n_resamples, array.size))
    means = array[picks].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def test_mean_std_cv_by_hand() -> None:
    s = describe([10.0, 12.0, 14.0])
    assert s.n == 3 and s.mean == pytest.approx(12.0)
    # sample sd: sqrt(((10-12)^2 + 0 + (14-12)^2) / (3 - 1)) = sqrt(4) = 2
    assert s.std == pytest.approx(2.0) and s.cv == pytest.approx(2.0 / 12.0)
    # t(0.975, 2 df) = 4.3027 (any t table): half width 4.3027 * 2 / sqrt(3) = 4.9683
    assert s.ci_method == "t"
    assert (s.ci_low, s.ci_high) == pytest.approx((12.0 - 4.9683, 12.0 + 4.9683), abs=1e-3)
    assert (s.ci_low, s.ci_high) == pytest.approx(_scipy_t([10.0, 12.0, 14.0]), rel=1e-12)
    four = describe([1.0, 2.0, 3.0, 4.0])  # sd = sqrt(5/3)
    assert four.std == pytest.approx(math.sqrt(5.0 / 3.0)) and four.cv == pytest.approx(math.sqrt(5.0 / 3.0) / 2.5)


def test_nulls_are_ignored_and_one_value_has_no_spread() -> None:
    s = describe([3.0, None, float("nan"), 5.0])
    assert s.n == 2 and s.mean == pytest.approx(4.0) and s.std == pytest.approx(math.sqrt(2.0))
    one = describe([7.0])
    assert one.n == 1 and one.mean == 7.0
    assert all(math.isnan(v) for v in (one.std, one.cv, one.ci_low, one.ci_high)) and one.ci_method is None
    none = describe(pd.Series([None, None], dtype="Float64"))
    assert none.n == 0 and math.isnan(none.mean)


def test_t_interval_matches_the_formula_and_is_wider_than_a_small_sample_bootstrap() -> None:
    values = np.array([10.0, 12.0, 14.0, 11.0, 19.0])
    # mean 13.2, sd sqrt(12.7) = 3.5637, t(0.975, 4 df) = 2.7764: half width 2.7764 * 3.5637 / sqrt(5) = 4.4249
    low, high = t_ci(values)
    assert (low, high) == pytest.approx((13.2 - 4.4249, 13.2 + 4.4249), abs=1e-3)
    # t(0.95, 4 df) = 2.1318 for a 90 % interval
    assert t_ci(values, confidence=0.9) == pytest.approx((13.2 - 3.3976, 13.2 + 3.3976), abs=1e-3)
    # the percentile bootstrap of so few values is much narrower: what made "95 %" intervals miss
    boot_low, boot_high = bootstrap_ci(values, seed=0)
    assert boot_high - boot_low < 0.8 * (high - low)
    s = describe(values)
    assert s.ci_method == "t" and (s.ci_low, s.ci_high) == pytest.approx(_scipy_t(values), rel=1e-12)
    assert t_ci(np.array([3.0, 3.0, 3.0])) == (3.0, 3.0)
    with pytest.raises(ValueError, match="two values"):
        t_ci(np.array([1.0]))
    with pytest.raises(ValueError, match="confidence"):
        describe(values, confidence=95)


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [2, 3, 7, 29])
def test_t_interval_agrees_with_scipy(n: int, confidence: float) -> None:
    values = np.random.default_rng(n).lognormal(mean=3.0, sigma=0.4, size=n)  # skewed, like latencies
    assert t_ci(values, confidence=confidence) == pytest.approx(_scipy_t(values, confidence), rel=1e-12)
    assert (describe(values, confidence=confidence, bootstrap_min_n=None).ci_low,
            describe(values, confidence=confidence, bootstrap_min_n=None).ci_high) == pytest.approx(
        _scipy_t(values, confidence), rel=1e-12)  # fmt: skip


TRIALS = 2000
TRUE_MEAN = 10.0


def _coverage(samples: np.ndarray, interval: object) -> float:
    """Share of the samples (one per row) whose interval holds the true mean."""
    bounds = np.array([interval(row) for row in samples])  # type: ignore[operator]
    return float(np.mean((bounds[:, 0] <= TRUE_MEAN) & (TRUE_MEAN <= bounds[:, 1])))


def _z_interval(row: np.ndarray) -> tuple[float, float]:
    """A wrong small-sample formula: the normal quantile 1.96 instead of Student's t."""
    half = 1.96 * row.std(ddof=1) / math.sqrt(row.size)
    return row.mean() - half, row.mean() + half


@pytest.mark.parametrize("n", [3, 5, 10])
def test_ci_covers_the_true_mean_at_small_n(n: int) -> None:
    """A 95 % interval must hold the true mean 95 % of the time, no less and no more. With 2000 trials the
    estimate's standard error is 0.49 %, so the band 95 ± 1.5 % is three standard errors either side; the
    samples are drawn once with a fixed seed, so the test is deterministic."""
    samples = np.random.default_rng(20 + n).normal(loc=TRUE_MEAN, scale=2.0, size=(TRIALS, n))
    assert 0.935 <= _coverage(samples, t_ci) <= 0.965
    assert 0.88 <= _coverage(samples, lambda row: t_ci(row, confidence=0.9)) <= 0.92  # the level is honoured
    # the band is narrow enough to reject wrong formulas on the same samples (z: about 80, 87, 92 %;
    # a 99 % quantile: about 99 %; a one-sided 95 % quantile: about 90 %) ...
    assert _coverage(samples, _z_interval) < 0.935
    assert _coverage(samples, lambda row: t_ci(row, confidence=0.99)) > 0.965
    assert _coverage(samples, lambda row: t_ci(row, confidence=0.9)) < 0.935
    # ... and the percentile bootstrap (about 73 %, 84 %, 89 % at n = 3, 5, 10)
    assert _coverage(samples, lambda row: bootstrap_ci(row, n_resamples=500)) < 0.935


def test_bootstrap_only_from_bootstrap_min_n_values() -> None:
    rng = np.random.default_rng(4)
    small, large = rng.normal(5.0, 1.0, size=DEFAULT_BOOTSTRAP_MIN_N - 1), rng.normal(5.0, 1.0, size=40)
    assert describe(small).ci_method == "t"
    big = describe(large, seed=9)
    assert big.ci_method == "bootstrap" and (big.ci_low, big.ci_high) == pytest.approx(
        _reference_bootstrap(large, seed=9), rel=1e-12
    )
    t_small = describe(small)
    assert (t_small.ci_low, t_small.ci_high) == pytest.approx(_scipy_t(small), rel=1e-12)
    assert describe(large, bootstrap_min_n=None).ci_method == "t"
    assert describe(small, bootstrap_min_n=3).ci_method == "bootstrap"


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
    # 12 ± t(0.975, 2) · 2 / √3 = 12 ± 4.9683, as SciPy computes it too
    assert (a["throughput_tokens_per_s_ci_low"], a["throughput_tokens_per_s_ci_high"]) == pytest.approx(
        (12.0 - 4.9683, 12.0 + 4.9683), abs=1e-3
    )
    assert (a["throughput_tokens_per_s_ci_low"], a["throughput_tokens_per_s_ci_high"]) == pytest.approx(
        _scipy_t([10.0, 12.0, 14.0]), rel=1e-12
    )
    assert a["throughput_tokens_per_s_ci_method"] == "t"
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
    assert pd.isna(c["throughput_tokens_per_s_ci_method"])
    assert not bool(c["unstable"])


def test_threshold_and_seed_are_honoured() -> None:
    loose = group_stats(_frame(), cv_threshold=0.6).set_index("config_hash")
    assert not loose["unstable"].any()
    tight = group_stats(_frame(), cv_threshold=0.005).set_index("config_hash")
    assert bool(tight.loc["b", "unstable"])
    # t intervals (the default below 30 cycles) do not depend on the seed
    pd.testing.assert_frame_equal(group_stats(_frame(), seed=3), group_stats(_frame(), seed=4))
    # bootstrap intervals do, and the same seed gives the same intervals
    first, again = group_stats(_frame(), seed=3, bootstrap_min_n=3), group_stats(_frame(), seed=3, bootstrap_min_n=3)
    pd.testing.assert_frame_equal(first, again)
    assert (first["throughput_tokens_per_s_ci_method"].dropna() == "bootstrap").all()
    five = _frame().iloc[[0, 1, 2, 2, 2]].assign(throughput_tokens_per_s=[10.0, 12.0, 14.0, 11.0, 19.0])
    by_seed = {seed: group_stats(five, seed=seed, bootstrap_min_n=5).iloc[0] for seed in (7, 8)}
    for seed, row in by_seed.items():
        expected = _reference_bootstrap([10.0, 12.0, 14.0, 11.0, 19.0], seed=seed)
        assert (row["throughput_tokens_per_s_ci_low"], row["throughput_tokens_per_s_ci_high"]) == pytest.approx(
            expected, rel=1e-12
        )
    bounds = ["throughput_tokens_per_s_ci_low", "throughput_tokens_per_s_ci_high"]
    assert list(by_seed[7][bounds]) != list(by_seed[8][bounds])


def test_default_groups_are_the_swept_keys_one_per_configuration() -> None:
    stats = group_stats(_frame())
    assert list(stats.columns[:3]) == ["backend", "batch", "config_hash"]  # swept keys, then the configuration
    assert [tuple(r) for r in stats[["backend", "batch", "config_hash"]].itertuples(index=False)] == [
        ("pytorch", 1, "a"), ("pytorch", 8, "b"), ("vllm", 1, "c"),
    ]
    assert list(stats["configs"]) == [1, 1, 1]


def test_group_by_pools_the_runs_of_configurations_sharing_the_keys() -> None:
    frame = _frame()
    stats = group_stats(frame, group_by=["backend"]).set_index("backend")
    assert list(stats.index) == ["pytorch", "vllm"] and list(stats.columns[:1]) == ["config_hash"]
    pytorch = stats.loc["pytorch"]
    values = frame.loc[frame["backend"] == "pytorch", "throughput_tokens_per_s"].to_numpy()
    assert (pytorch["configs"], pytorch["cycles"]) == (2, 6)
    assert pytorch["throughput_tokens_per_s_mean"] == pytest.approx(values.mean())
    assert pytorch["throughput_tokens_per_s_std"] == pytest.approx(values.std(ddof=1))
    assert bool(pytorch["unstable"])  # two very different batch sizes pooled: a large spread
    assert pd.isna(pytorch["config_hash"]) and pd.isna(pytorch["batch"])  # mixed in the group: null, not "a"
    assert stats.loc["vllm", "config_hash"] == "c" and stats.loc["vllm", "batch"] == 1  # one value: carried
    by_batch = group_stats(frame, group_by=["batch"]).set_index("batch")
    assert by_batch.loc[1, "cycles"] == 4 and by_batch.loc[1, "configs"] == 2 and pd.isna(by_batch.loc[1, "backend"])


def test_group_by_several_keys_splits_configurations() -> None:
    stats = group_stats(_frame(), group_by=["batch", "model_reused"])
    assert list(stats.columns[:2]) == ["batch", "model_reused"]
    warm = stats[(stats["batch"] == 1) & stats["model_reused"]].iloc[0]
    assert warm["cycles"] == 2 and warm["config_hash"] == "a"
    assert warm["throughput_tokens_per_s_mean"] == pytest.approx(13.0)
    assert warm["throughput_tokens_per_s_std"] == pytest.approx(math.sqrt(2.0))
    cold = stats[(stats["batch"] == 1) & ~stats["model_reused"]].iloc[0]
    assert cold["cycles"] == 2 and cold["configs"] == 2  # a's first cycle and c's only one
    assert len(stats) == 4


def test_group_by_keys_name_columns_or_swept_keys() -> None:
    frame = hand_frame()
    assert resolve_group_by(["model", "backend", "batch_size"], frame.columns) == ["model_name", "backend", "batch_size"]
    with pytest.raises(UnknownColumn, match="no column nope"):
        group_stats(_frame(), group_by=["nope"])
    with pytest.raises(UnknownColumn, match="did you mean 'batch'"):
        group_stats(_frame(), group_by=["bach"])
    # before a campaign runs: keys of the planned jobs' overrides, and the summary's own columns
    check_group_by(["backend.batch_size", "model", "model_reused", "repetition"], {"backend", "backend.batch_size"})
    with pytest.raises(UnknownColumn, match="did you mean 'backend.batch_size'"):
        check_group_by(["backend.batch_sise"], {"backend", "backend.batch_size"})


def test_hand_summary_frame_with_energy() -> None:
    stats = group_stats(hand_frame())
    assert len(stats) == 6 and (stats["cycles"] == 3).all()
    # energy per token = base x (1, 1.03, 1.06): CV = 0.03 / 1.03 for every configuration
    assert np.allclose(stats["energy_per_output_token_j_cv"], 0.03 / 1.03)
    assert not stats["energy_per_output_token_j_unstable"].any()


def test_empty_frame_gives_empty_stats() -> None:
    stats = group_stats(_frame().iloc[0:0])
    assert len(stats) == 0 and "unstable" in stats.columns
