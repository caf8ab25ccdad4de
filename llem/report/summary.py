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

SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
STATS_CSV = "summary_stats.csv"
STATS_PARQUET = "summary_stats.parquet"

# Identity of a row: which job, which configuration.
ID_COLUMNS: dict[str, str] = {
    "job_num": "Int64",
    "cycle": "Int64",
    "repetition": "Int64",
    "backend": "string",
    "config_hash": "string",
}

# Headline figures, in result.json units (see docs/results-guide.md).
METRIC_COLUMNS: dict[str, str] = {
    "model_name": "string",
    "energy_source": "string",
    "energy_total_j": "float64",
    "energy_adjusted_j": "float64",
    "energy_per_output_token_j": "float64",
    "energy_unavailable_reason": "string",
    "energy_scope": "string",
    "energy_gpu_j": "float64",
    "energy_cpu_j": "float64",
    "energy_dram_j": "float64",
    "passes": "Int64",
    "throughput_tokens_per_s": "float64",
    "requests_per_s": "float64",
    "output_tokens": "Int64",
    "duration_s": "float64",
    "ttft_ms_p50": "float64",
    "ttft_ms_p95": "float64",
    "ttft_ms_p99": "float64",
    "itl_ms_p50": "float64",
    "itl_ms_p95": "float64",
    "itl_ms_p99": "float64",
    "queue_ms_p50": "float64",
    "prefill_ms_p50": "float64",
    "prefill_energy_per_token_j": "float64",
    "decode_energy_per_token_j": "float64",
    "prefill_tokens_per_s": "float64",
    "decode_tokens_per_s": "float64",
    "flops_total": "float64",
    "flops_per_output_token": "float64",
    "memory_weights_bytes": "Int64",
    "memory_weights_kv_peak_bytes": "Int64",
    "memory_peak_allocated_bytes": "Int64",
    "memory_reserved_bytes": "Int64",
    "model_reused": "boolean",
    "warnings_count": "Int64",
}

TRAILING_COLUMNS: dict[str, str] = {"result_path": "string"}

FIXED_COLUMNS: frozenset[str] = frozenset(ID_COLUMNS) | frozenset(METRIC_COLUMNS) | frozenset(TRAILING_COLUMNS)


def param_column(key: str) -> str | None:
    """Column name of a swept key; None for `backend`, which already has its own column."""
    if key == "backend":
        return None
    return f"param.{key}" if key in FIXED_COLUMNS else key


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The swept-parameter columns of a summary frame: everything that is not a fixed column."""
    return [c for c in frame.columns if c not in FIXED_COLUMNS]


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


def summary_frame(campaign: Campaign) -> pd.DataFrame:
    """The campaign's rows as a typed DataFrame: id columns, swept parameters, metrics."""
    rows = campaign.rows
    data: dict[str, pd.Series] = {}
    for name, dtype in ID_COLUMNS.items():
        data[name] = pd.Series([row.get(name) for row in rows], dtype=dtype)
    for key in campaign.param_keys:
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
    frame = summary_frame(campaign)
    keys = campaign_group_by(campaign, group_by)
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
