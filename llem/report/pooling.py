"""Which runs of a group may be pooled, and the group's verdict.

Energy figures of runs that measured different things (`gpu+cpu+dram` in one cycle,
`gpu` alone in another, when RAPL was unreadable on one node) are not repeats of one
measurement: their mean would describe neither. Such a group gets no energy statistics,
and says why; its other figures (throughput, latency) are still pooled. A group whose
coefficient of variation exceeds the threshold gets `warn`, as do groups refused pooling;
a run's own `fail` or `warn` carries over to its group.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

GROUP_VERDICT_COLUMNS = ("verdict", "verdict_reasons", "energy_not_pooled")
_ORDER = {"pass": 0, "warn": 1, "fail": 2}


def is_energy_metric(metric: str) -> bool:
    return "energy" in metric


def scope_conflict(group: pd.DataFrame) -> str | None:
    """Why the group's energy figures cannot be pooled, or None when every run measured the same scope."""
    if "energy_scope" not in group.columns:
        return None
    measured = group[group["energy_per_output_token_j"].notna()] if "energy_per_output_token_j" in group else group
    counts = measured["energy_scope"].fillna("none").value_counts(sort=False)
    if len(counts) < 2:
        return None
    parts = ", ".join(f"{scope} ({n} run{'s' if n > 1 else ''})" for scope, n in counts.items())
    return f"energy scopes differ between runs: {parts}; energy figures not pooled"


def group_verdict(group: pd.DataFrame, unstable_metrics: Iterable[str], conflict: str | None) -> tuple[str, str | None]:
    """The worst of the runs' verdicts, `warn` for an unstable metric or a refused pooling; and why."""
    status = "pass"
    reasons: list[str] = []
    if "verdict" in group.columns:
        seen = [str(v) for v in group["verdict"].dropna()]
        for level in ("fail", "warn"):
            n = seen.count(level)
            if n:
                reasons.append(f"{n} run{'s' if n > 1 else ''} with verdict {level}")
        status = max(seen, key=lambda v: _ORDER.get(v, 0), default="pass")
    unstable = list(unstable_metrics)
    if unstable:
        reasons.append(f"CV above the threshold: {', '.join(unstable)}")
    if conflict:
        reasons.append(conflict)
    if (unstable or conflict) and _ORDER.get(status, 0) < _ORDER["warn"]:
        status = "warn"
    return status, "; ".join(reasons) or None


def typed(out: pd.DataFrame) -> pd.DataFrame:
    """The group verdict columns as strings (null where there is nothing to say)."""
    for column in GROUP_VERDICT_COLUMNS:
        if column in out.columns:
            out[column] = out[column].astype("string")
    return out
