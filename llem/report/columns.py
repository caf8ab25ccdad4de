"""The columns of a campaign's summary table: which job, its headline figures, its swept keys.

Shared by the summary (llem.report.summary) and the statistics over it (llem.report.stats).
"""

from __future__ import annotations

import pandas as pd

from llem.report.validity import VERDICT_COLUMNS

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
    # scenario=serving only (null for offline jobs): the load point's `serving` section
    "serving_ttft_ms_p50": "float64",
    "serving_ttft_ms_p99": "float64",
    "serving_tpot_ms_p50": "float64",
    "serving_tpot_ms_p99": "float64",
    "serving_output_tokens_per_s": "float64",
    "serving_requests_per_s": "float64",
    "serving_goodput_rps": "float64",
    "serving_steady_s": "float64",
    "serving_j_per_output_token": "float64",
    "serving_j_per_request": "float64",
    "serving_valid": "boolean",
    **VERDICT_COLUMNS,
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
