"""Each summary row's verdict (and per-request latency), re-judged from its result.json by `llem.measure.verdict`.

Re-judging (rather than reading the stored verdict) gives results written before the
verdict existed one too, and keeps every row of a report under the same rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llem.measure.result import ExperimentResult
from llem.measure.verdict import judge_file, reasons_text

VERDICT_COLUMNS: dict[str, str] = {
    "verdict": "string",
    "verdict_reasons": "string",
    # per-request latency, the offline counterpart of serving's TTFT/TPOT on the frontier
    "e2e_ms_p50": "float64",
    "e2e_ms_p99": "float64",
}
# Not a summary column: the full reasons of a row, for the report's table of reasons.
DETAIL_KEY = "verdict_detail"
# Text symbols every common font has (emoji need an emoji font, which headless and server browsers lack).
BADGES = {"pass": "✓ pass", "warn": "⚠ warn", "fail": "✗ fail"}


def verdict_values(result_path: Path, result: ExperimentResult) -> dict[str, Any]:
    """`verdict`, `verdict_reasons` (one line), end-to-end latency and the reasons as dicts under DETAIL_KEY."""
    verdict = judge_file(Path(result_path), result.model_dump(mode="json"))
    return {
        "verdict": verdict.status,
        "verdict_reasons": reasons_text(verdict) or None,
        "e2e_ms_p50": result.latency.e2e_ms.p50,
        "e2e_ms_p99": result.latency.e2e_ms.p99,
        DETAIL_KEY: [r.model_dump(mode="json") for r in verdict.reasons],
    }


def badge(status: Any) -> str:
    """The row's badge; an unknown or missing verdict shows as a dash."""
    return BADGES.get(str(status), "—") if isinstance(status, str) else "—"
