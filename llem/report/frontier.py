"""Energy–latency and energy–throughput frontiers: the configurations no other one beats on both axes.

A configuration is on the frontier (Pareto-optimal) when no other configuration is at
least as good on both axes and strictly better on one. Points are configurations
(means over their cycles); results whose verdict is `fail` are left out and counted,
since a wrong figure could push a real configuration off the frontier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ENERGY = "energy_per_output_token_j"
# (column, label, lower is better) for the x axis; the y axis is always energy per output token (lower is better).
AXES: tuple[tuple[str, str, bool], ...] = (
    ("ttft_ms_p50", "TTFT p50 (ms)", True),
    ("ttft_ms_p99", "TTFT p99 (ms)", True),
    ("itl_ms_p99", "TPOT p99 (ms, inter-token latency)", True),
    ("e2e_ms_p99", "Per-request latency p99 (ms)", True),
    ("throughput_tokens_per_s", "Throughput (tok/s)", False),
)


def pareto_mask(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, x_lower: bool = True,
                y_lower: bool = True) -> np.ndarray:  # fmt: skip
    """True for each point no other point dominates. O(n log n): sort by x, sweep the best y.

    NaN points are never on the frontier. Identical points do not dominate each other.
    """
    xs = np.asarray(x, dtype=float) * (1.0 if x_lower else -1.0)
    ys = np.asarray(y, dtype=float) * (1.0 if y_lower else -1.0)
    mask = np.zeros(xs.shape[0], dtype=bool)
    valid = np.flatnonzero(~(np.isnan(xs) | np.isnan(ys)))
    if valid.size == 0:
        return mask
    order = valid[np.lexsort((ys[valid], xs[valid]))]  # by x, then y
    best_y = np.inf  # lowest y among points with a strictly smaller x
    i = 0
    while i < order.size:
        j = i
        while j < order.size and xs[order[j]] == xs[order[i]]:
            j += 1
        group = order[i:j]
        group_min = ys[group[0]]  # sorted by y within equal x
        if group_min < best_y:
            mask[group[ys[group] == group_min]] = True
        best_y = min(best_y, group_min)
        i = j
    return mask


def config_points(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per configuration (config_hash): backend, the first row's other columns, means of `columns`,
    and `runs`; rows with verdict `fail` are left out beforehand."""
    if not len(frame):
        return pd.DataFrame(columns=["config_hash", "runs", *columns])
    numeric = frame[list(columns)].apply(pd.to_numeric, errors="coerce").astype(float)
    means = numeric.groupby(frame["config_hash"], sort=False).mean()
    firsts = frame.drop(columns=list(columns)).groupby("config_hash", sort=False).first()
    out = firsts.join(means)
    out["runs"] = frame.groupby("config_hash", sort=False).size()
    return out.reset_index()


# A serving load point is judged on its steady-window figures (scenario=serving), not on the whole run's:
# decision column -> the summary column that holds it for a load point.
SERVING_VIEW: dict[str, str] = {
    ENERGY: "serving_j_per_output_token",
    "ttft_ms_p50": "serving_ttft_ms_p50",
    "ttft_ms_p99": "serving_ttft_ms_p99",
    "itl_ms_p99": "serving_tpot_ms_p99",
    "throughput_tokens_per_s": "serving_output_tokens_per_s",
}


def serving_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each serving load point's decision columns taken from its steady window.

    Offline rows are left as they are. For a load point, energy per output token is the steady window's
    (null where energy was not measured, never the whole run's), TTFT and TPOT are the load's, and
    throughput is the output-token rate under that load.
    """
    marker = SERVING_VIEW["ttft_ms_p50"]
    if marker not in frame.columns or not len(frame):
        return frame
    serving = frame[marker].notna()
    if not serving.any():
        return frame
    out = frame.copy()
    for column, source in SERVING_VIEW.items():
        if source in out.columns:
            values = pd.to_numeric(out[source], errors="coerce").astype(float)
            base = pd.to_numeric(out[column], errors="coerce").astype(float) if column in out.columns else values
            out[column] = base.where(~serving, values)
    return out


def usable(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows whose verdict is not `fail` (serving load points seen through `serving_view`), and how many were
    left out."""
    frame = serving_view(frame)
    if "verdict" not in frame.columns or not len(frame):
        return frame, 0
    failed = frame["verdict"].astype("string").fillna("") == "fail"
    return frame[~failed], int(failed.sum())


@dataclass
class Frontier:
    """One frontier: the configuration points with `on_frontier` marked, for one x axis against energy."""

    x: str
    label: str
    x_lower: bool
    points: pd.DataFrame
    left_out_fail: int = 0
    no_data: list[str] = field(default_factory=list)

    @property
    def optimal(self) -> pd.DataFrame:
        return self.points[self.points["on_frontier"]].sort_values(self.x)


def frontiers(frame: pd.DataFrame, axes: Sequence[tuple[str, str, bool]] = AXES) -> list[Frontier]:
    """The frontier of energy per output token against each axis that has data."""
    rows, failed = usable(frame)
    out = []
    for column, label, lower in axes:
        if column not in rows.columns:
            continue
        points = config_points(rows, [column, ENERGY])
        points = points[points[column].notna() & points[ENERGY].notna()].reset_index(drop=True)
        if not len(points):
            continue
        points["on_frontier"] = pareto_mask(points[column], points[ENERGY], x_lower=lower)
        out.append(Frontier(column, label, lower, points, failed))
    return out
