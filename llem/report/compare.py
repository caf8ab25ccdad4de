"""Is a difference between two campaigns larger than the noise? Welch's t, per shared configuration.

For each configuration measured in both campaigns (same config hash), and each figure,
the difference of the means over cycles (B − A) with its 95 % confidence interval from
Welch's t (unequal variances, Welch–Satterthwaite degrees of freedom). The difference
is called real when the interval excludes zero. This is how a driver, an engine
upgrade or a power setting is checked: run the same campaign before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llem.report.frontier import usable

COMPARED: tuple[tuple[str, str], ...] = (
    ("energy_per_output_token_j", "Energy/token (J)"),
    ("ttft_ms_p50", "TTFT p50 (ms)"),
    ("ttft_ms_p99", "TTFT p99 (ms)"),
    ("itl_ms_p50", "ITL p50 (ms)"),
    ("itl_ms_p99", "ITL p99 (ms)"),
)


@dataclass(frozen=True)
class Difference:
    """B − A for one figure of one configuration; NaN interval with fewer than two runs on a side."""

    config_hash: str
    metric: str
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    diff: float
    ci_low: float
    ci_high: float
    df: float

    @property
    def significant(self) -> bool | None:
        """True when the interval excludes 0; None when there is no interval."""
        if np.isnan(self.ci_low) or np.isnan(self.ci_high):
            return None
        return bool(self.ci_low > 0 or self.ci_high < 0)

    @property
    def relative(self) -> float:
        return self.diff / abs(self.mean_a) if self.mean_a else float("nan")


def welch(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
          confidence: float = 0.95) -> tuple[float, float, float, float]:  # fmt: skip
    """(mean(b) − mean(a), CI low, CI high, degrees of freedom) by Welch's t; NaN interval below 2 values a side."""
    from scipy import stats as scipy_stats

    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    nan = float("nan")
    if x.size == 0 or y.size == 0:
        return nan, nan, nan, nan
    diff = float(y.mean() - x.mean())
    if x.size < 2 or y.size < 2:
        return diff, nan, nan, nan
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(va + vb))
    if se == 0:
        return diff, diff, diff, float("inf")
    df = float((va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1)))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, df)) * se
    return diff, diff - half, diff + half, df


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, metrics: Sequence[str] = tuple(m for m, _ in COMPARED)
                   ) -> list[Difference]:  # fmt: skip
    """Every figure of every configuration present in both summaries (verdict `fail` runs left out)."""
    a, _ = usable(a)
    b, _ = usable(b)
    if not len(a) or not len(b):
        return []
    shared = [h for h in pd.unique(a["config_hash"].dropna()) if h in set(b["config_hash"].dropna())]
    out = []
    for config_hash in shared:
        ra, rb = a[a["config_hash"] == config_hash], b[b["config_hash"] == config_hash]
        for metric in metrics:
            if metric not in ra.columns or metric not in rb.columns:
                continue
            xa = pd.to_numeric(ra[metric], errors="coerce").astype(float).dropna()
            xb = pd.to_numeric(rb[metric], errors="coerce").astype(float).dropna()
            if not len(xa) or not len(xb):
                continue
            diff, low, high, df = welch(xa, xb)
            out.append(Difference(str(config_hash), metric, float(xa.mean()), float(xb.mean()), len(xa), len(xb),
                                  diff, low, high, df))  # fmt: skip
    return out
