"""Statistics across cycles: how much a configuration's figures move between repeats.

A campaign runs each configuration several times (cycles) so that a difference between
configurations can be told from run-to-run noise. Per group this gives the mean, the sample
standard deviation, the coefficient of variation and a confidence interval of the mean, and
flags groups too noisy to trust. A group is one configuration (keyed by its swept values),
or, with the campaign's `group_by`, every run of the configurations that share those keys.

Interval: Student's t, mean ± t(1 − α/2, n − 1) · sd / √n. Campaigns usually run 3 to 10
cycles, and at such n a percentile bootstrap is far too narrow (at 3 cycles its nominal
95 % interval holds the true mean only about three times in four, because resampling three
values cannot show spread the sample does not have). The t interval is exact for normally
distributed cycles and close to it for the mildly skewed figures runs produce. A seeded
percentile bootstrap is used only for groups of at least `bootstrap_min_n` values (30 by
default), where it no longer undercovers and adapts to skew; each interval records which
method made it.

Threshold: a group is `unstable` when a metric's CV exceeds 0.1 (10 %). Repeated runs
of the same configuration on a quiet machine usually agree within a few percent; beyond
10 % the spread is as large as many of the effects a sweep looks for (precision, batch
size), so differences between such configurations should not be read without more
cycles or a quieter machine.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from llem.report.pooling import GROUP_VERDICT_COLUMNS, group_verdict, is_energy_metric, scope_conflict, typed
from llem.report.columns import FIXED_COLUMNS, param_column, param_columns

DEFAULT_METRICS: tuple[str, ...] = (
    "energy_per_output_token_j",
    "throughput_tokens_per_s",
    "ttft_ms_p50",
    "itl_ms_p50",
)
DEFAULT_CV_THRESHOLD = 0.1
DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
# Below this many values the percentile bootstrap undercovers; the t interval is used instead.
DEFAULT_BOOTSTRAP_MIN_N = 30

CiMethod = Literal["t", "bootstrap"]


class UnknownColumn(ValueError):
    """A `group_by` key that is not a summary column."""


@dataclass(frozen=True)
class MetricStats:
    """Spread of one metric over one group's cycles; NaN where it cannot be computed.

    `ci_method` names how the interval was made ("t" or "bootstrap"); None when there is none.
    """

    n: int
    mean: float
    std: float
    cv: float
    ci_low: float
    ci_high: float
    ci_method: CiMethod | None = None


def t_ci(values: np.ndarray, *, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean: mean ± t(1 − α/2, n − 1) · sd / √n (needs n ≥ 2)."""
    from scipy import stats as scipy_stats  # here, not at the top: the launcher imports this package light

    values = np.asarray(values, dtype=float)
    n = values.size
    if n < 2:
        raise ValueError("a t interval needs at least two values")
    mean = float(values.mean())
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * float(values.std(ddof=1)) / np.sqrt(n)
    return mean - half, mean + half


def bootstrap_ci(
    values: np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; the same seed always gives the same interval.

    Too narrow for small samples (see the module docstring): `describe` uses it only from
    `bootstrap_min_n` values on.
    """
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(n_resamples, len(values)))
    means = values[picks].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def describe(
    values: Sequence[float] | np.ndarray | pd.Series,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
    bootstrap_min_n: int | None = DEFAULT_BOOTSTRAP_MIN_N,
) -> MetricStats:
    """Mean, sample std (ddof=1), CV = std/|mean| and a CI of the mean of non-null values.

    The CI is Student's t, or the seeded percentile bootstrap when there are at least
    `bootstrap_min_n` values (None: always t). With fewer than two values there is no
    spread to speak of: std, CV and CI are NaN.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    array = pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").to_numpy(dtype=float)
    array = array[~np.isnan(array)]
    nan = float("nan")
    if array.size == 0:
        return MetricStats(0, nan, nan, nan, nan, nan)
    mean = float(array.mean())
    if array.size < 2:
        return MetricStats(1, mean, nan, nan, nan, nan)
    std = float(array.std(ddof=1))
    cv = std / abs(mean) if mean != 0 else nan
    method: CiMethod
    if bootstrap_min_n is not None and array.size >= bootstrap_min_n:
        method = "bootstrap"
        low, high = bootstrap_ci(array, n_resamples=n_resamples, confidence=confidence, seed=seed)
    else:
        method = "t"
        low, high = t_ci(array, confidence=confidence)
    return MetricStats(int(array.size), mean, std, cv, low, high, method)


def resolve_group_by(group_by: Sequence[str], columns: Collection[str]) -> list[str]:
    """The summary columns named by `group_by` keys.

    A key is a summary column (`backend`, `model_name`, `model_reused`, `repetition`, ...) or a
    swept key as the manifest writes it (`backend.batch_size`, `fp_precision`; `param.<key>` when
    it shares a fixed column's name); `model` is `model_name` where no job set a model. An
    unknown key raises UnknownColumn naming the closest columns.
    """
    present = list(columns)
    out: list[str] = []
    for key in group_by:
        column = param_column(key) or "backend"
        if column not in present:
            column = key if key in present else ("model_name" if key == "model" and "model_name" in present else "")
        if not column:
            close = difflib.get_close_matches(key, [str(c) for c in present], n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f" ({_columns_by_kind(present)})"
            raise UnknownColumn(f"group_by: no column {key}{hint}")
        if column not in out:
            out.append(column)
    return out


def _columns_by_kind(columns: Collection[str]) -> str:
    """The columns a key may name, sorted within each kind: what was swept first, then the figures."""
    names = [str(c) for c in columns]
    swept = sorted(c for c in names if c == "backend" or c not in FIXED_COLUMNS)
    figures = sorted(c for c in names if c not in swept)
    return f"swept keys: {', '.join(swept) or 'none'}; figures and job fields: {', '.join(figures)}"


def check_group_by(group_by: Sequence[str], param_keys: Collection[str]) -> None:
    """Before a campaign runs: every `group_by` key names a column its summary will have."""
    columns = [*FIXED_COLUMNS, *(param_column(k) or "backend" for k in param_keys)]
    resolve_group_by(group_by, list(dict.fromkeys(columns)))


def group_keys(frame: pd.DataFrame, group_by: Sequence[str] = ()) -> list[str]:
    """The columns statistics are grouped by.

    With `group_by`: exactly those columns (configurations that share their values pool their
    runs). Without: the swept keys — backend and every swept parameter — plus `config_hash`, so
    each group is one configuration and two configurations never share a group.
    """
    if group_by:
        return resolve_group_by(group_by, frame.columns)
    return ["backend", *param_columns(frame), "config_hash"]


def _constant(values: pd.Series) -> object:
    """The group's single value of a column, or None when the group mixes values."""
    unique = values.drop_duplicates()
    if len(unique) != 1:
        return None
    value = unique.iloc[0]
    return None if value is pd.NA or (isinstance(value, float) and np.isnan(value)) else value


def _plain(value: object) -> object:
    return None if value is pd.NA else value


def group_stats(
    frame: pd.DataFrame,
    *,
    group_by: Sequence[str] = (),
    metrics: Sequence[str] = DEFAULT_METRICS,
    cv_threshold: float = DEFAULT_CV_THRESHOLD,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
    bootstrap_min_n: int | None = DEFAULT_BOOTSTRAP_MIN_N,
) -> pd.DataFrame:
    """One row per group (see `group_keys`): the keys; `config_hash`, backend and swept values where
    the group has one value of them (else null); `configs` (distinct configurations) and `cycles`
    (runs pooled); then per metric `<m>_n/_mean/_std/_cv/_ci_low/_ci_high/_ci_method/_unstable`,
    and `unstable` (any metric).

    `<m>_ci_method` is "t" or "bootstrap" (see `describe`), null with no interval;
    `<m>_unstable` is null when the CV is unknown (fewer than two values).
    """
    keys = group_keys(frame, group_by)
    carried = [c for c in ["config_hash", "backend", *param_columns(frame)] if c not in keys]
    records = []
    if len(frame):
        for _, group in frame.groupby(keys, sort=False, dropna=False):
            first = group.iloc[0]
            record: dict[str, object] = {k: _plain(first[k]) for k in keys}
            record.update({c: _constant(group[c]) for c in carried})
            record["configs"] = int(group["config_hash"].nunique())
            record["cycles"] = len(group)
            any_unstable = False
            conflict = scope_conflict(group)
            unstable_metrics = []
            for metric in metrics:
                refused = conflict is not None and is_energy_metric(metric)
                s = describe(
                    group[metric].iloc[:0] if refused else group[metric],
                    n_resamples=n_resamples,
                    confidence=confidence,
                    seed=seed,
                    bootstrap_min_n=bootstrap_min_n,
                )
                unstable = None if np.isnan(s.cv) else bool(s.cv > cv_threshold)
                any_unstable = any_unstable or bool(unstable)
                if unstable:
                    unstable_metrics.append(metric)
                record.update(
                    {
                        f"{metric}_n": s.n,
                        f"{metric}_mean": s.mean,
                        f"{metric}_std": s.std,
                        f"{metric}_cv": s.cv,
                        f"{metric}_ci_low": s.ci_low,
                        f"{metric}_ci_high": s.ci_high,
                        f"{metric}_ci_method": s.ci_method,
                        f"{metric}_unstable": unstable,
                    }
                )
            record["unstable"] = any_unstable
            record["verdict"], record["verdict_reasons"] = group_verdict(group, unstable_metrics, conflict)
            record["energy_not_pooled"] = conflict
            records.append(record)
    columns = [*keys, *carried, "configs", "cycles"]
    for metric in metrics:
        columns += [f"{metric}_{s}" for s in ("n", "mean", "std", "cv", "ci_low", "ci_high", "ci_method", "unstable")]
    columns += ["unstable", *GROUP_VERDICT_COLUMNS]
    out = pd.DataFrame.from_records(records, columns=columns)
    for metric in metrics:
        out[f"{metric}_unstable"] = out[f"{metric}_unstable"].astype("boolean")
        out[f"{metric}_ci_method"] = out[f"{metric}_ci_method"].astype("string")
        for s in ("mean", "std", "cv", "ci_low", "ci_high"):
            out[f"{metric}_{s}"] = out[f"{metric}_{s}"].astype("float64")
    out["unstable"] = out["unstable"].astype(bool)
    return typed(out)
