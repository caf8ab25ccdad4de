"""One table per campaign — `summary.csv` and `summary.parquet` — one row per completed job,
and its statistics across cycles — `summary_stats.csv` and `summary_stats.parquet` — one row
per group (the campaign's `group_by`, or else one per configuration, keyed by the swept keys).

Columns have fixed types so a metric that was never measured is an empty cell (CSV) or
null (Parquet) rather than 0 or a column of strings, and so Parquet files of different
campaigns concatenate cleanly.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from llem.atomic import atomic_write
from llem.report.collect import Campaign, ReportWarning, collect
from llem.report.columns import (  # noqa: F401 - part of this module's interface too
    FIXED_COLUMNS,
    ID_COLUMNS,
    METRIC_COLUMNS,
    TRAILING_COLUMNS,
    param_column,
    param_columns,
)

SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
STATS_CSV = "summary_stats.csv"
STATS_PARQUET = "summary_stats.parquet"

def _plain(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict, tuple)) else value


def _param_series(values: list[Any]) -> pd.Series:
    """One swept key's values with one type: numbers, booleans or text (mixed types become text)."""
    plain = [_plain(v) for v in values]
    present = [v for v in plain if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(plain, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(plain, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([float("nan") if v is None else float(v) for v in plain], dtype="float64")
    return pd.Series([None if v is None else str(v) for v in plain], dtype="string")


def summary_frame(campaign: Campaign, group_by: Sequence[str] = ()) -> pd.DataFrame:
    """The campaign's rows as a typed DataFrame: id columns, swept parameters, metrics.

    A fixed setting (one value in every job) gets no column, unless `group_by` names it.
    """
    rows = campaign.rows
    data: dict[str, pd.Series] = {}
    for name, dtype in ID_COLUMNS.items():
        data[name] = pd.Series([row.get(name) for row in rows], dtype=dtype)
    named = [k for k in campaign.fixed if k in group_by and k not in campaign.param_keys]
    for key in [*campaign.param_keys, *named]:
        column = param_column(key)
        if column is not None:
            data[column] = _param_series([row["params"].get(key) for row in rows])
    for name, dtype in {**METRIC_COLUMNS, **TRAILING_COLUMNS}.items():
        values = [row.get(name) for row in rows]
        if dtype == "float64":
            values = [float("nan") if v is None else float(v) for v in values]
        data[name] = pd.Series(values, dtype=dtype)
    frame = pd.DataFrame(data)
    return frame.sort_values(["job_num", "result_path"], na_position="last", kind="stable").reset_index(drop=True)


def write_frame(frame: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    """Write summary.csv and summary.parquet atomically (temp file beside each, then rename)."""
    out_dir = Path(out_dir)
    csv_path = atomic_write(out_dir / SUMMARY_CSV, lambda tmp: frame.to_csv(tmp, index=False))
    parquet_path = atomic_write(out_dir / SUMMARY_PARQUET, lambda tmp: frame.to_parquet(tmp, index=False))
    return csv_path, parquet_path


def write_stats(stats: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    """Write summary_stats.csv and summary_stats.parquet atomically."""
    out_dir = Path(out_dir)
    csv_path = atomic_write(out_dir / STATS_CSV, lambda tmp: stats.to_csv(tmp, index=False))
    parquet_path = atomic_write(out_dir / STATS_PARQUET, lambda tmp: stats.to_parquet(tmp, index=False))
    return csv_path, parquet_path


def campaign_group_by(campaign: Campaign, group_by: Sequence[str] | None = None) -> list[str]:
    """`group_by` if given, else what the campaign's manifest recorded (empty: by configuration)."""
    if group_by:
        return list(group_by)
    return list(campaign.manifest.group_by) if campaign.manifest is not None else []


def write_summary(
    sweep_dir: Path, manifest_path: Path | None = None, *, group_by: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Write `<sweep_dir>/summary.csv` and `summary.parquet`, and the statistics grouped by
    `group_by` (default: the manifest's, else one group per configuration) into
    `summary_stats.csv` and `summary_stats.parquet`; returns (csv, parquet) of the summary.

    Works mid-campaign: only completed jobs with a readable result.json become rows.
    """
    from llem.report.stats import UnknownColumn, group_stats

    campaign = collect(Path(sweep_dir), manifest_path)
    keys = campaign_group_by(campaign, group_by)
    frame = summary_frame(campaign, keys)
    try:
        stats = group_stats(frame, group_by=keys)
    except UnknownColumn as error:  # a summary at the end of a campaign must not fail it
        warnings.warn(f"{error}; statistics are grouped by configuration instead", ReportWarning, stacklevel=2)
        stats = group_stats(frame)
    write_stats(stats, Path(sweep_dir))
    return write_frame(frame, Path(sweep_dir))


def read_summary(path: Path) -> pd.DataFrame:
    """Read a summary back (Parquet keeps the column types; CSV is re-typed where known)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    frame = pd.read_csv(path)
    for name, dtype in {**ID_COLUMNS, **METRIC_COLUMNS, **TRAILING_COLUMNS}.items():
        if name in frame.columns:
            frame[name] = frame[name].astype(dtype)
    return frame
