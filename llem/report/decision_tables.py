"""The report's decision tables: verdict reasons, frontiers, a target's answer, campaign differences, carbon.

Each function turns one of the decision modules (`frontier`, `target`, `compare`,
`carbon`) into a `Table` the Markdown and HTML renderers draw alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from llem.report.carbon import Factors, per_config
from llem.report.compare import COMPARED, compare_frames
from llem.report.frontier import ENERGY, frontiers
from llem.report.plots import config_label
from llem.report.summary import param_columns
from llem.report.target import TARGETS, TargetAnswer, cheapest_meeting
from llem.report.tables import Table, fmt
from llem.report.validity import DETAIL_KEY, badge

if TYPE_CHECKING:
    from llem.report.collect import Campaign
MAX_REASON_ROWS = 500


def _table(*args: Any) -> Table:
    return Table(*args)


def _fmt(value: Any) -> str:
    return fmt(value)


def _label(frame: pd.DataFrame, config_hash: str) -> str:
    rows = frame[frame["config_hash"] == config_hash]
    if not len(rows):
        return config_hash
    return config_label(rows.iloc[0], param_columns(frame))


def verdict_counts(frame: pd.DataFrame) -> str:
    if "verdict" not in frame.columns or not len(frame):
        return "no results"
    counts = frame["verdict"].astype("string").fillna("none").value_counts()
    return ", ".join(f"{badge(k)} {n}" for k, n in counts.items())


def reasons_table(campaign: Campaign) -> Table | None:
    """Every rule that tripped, per job: rule, measured value, limit and what to do (None when all passed)."""
    rows = []
    for row in campaign.rows:
        for reason in row.get(DETAIL_KEY) or []:
            rows.append([_fmt(row.get("job_num")), badge(reason["status"]), reason["rule"], _fmt(reason["value"]),
                         _fmt(reason["limit"]), reason["detail"]])  # fmt: skip
    if not rows:
        return None
    note = "Rules and limits: docs/validity.md. Results marked fail are left out of frontiers, targets and comparisons."
    if len(rows) > MAX_REASON_ROWS:
        note += f" First {MAX_REASON_ROWS} of {len(rows)}."
    return _table("Verdict reasons", ["Job", "Verdict", "Rule", "Value", "Limit", "Detail"], rows[:MAX_REASON_ROWS],
                  note)  # fmt: skip


def frontier_table(frame: pd.DataFrame) -> Table | None:
    """The configurations on each energy frontier (None without energy figures)."""
    found = frontiers(frame)
    if not found:
        return None
    rows = []
    for f in found:
        for _, point in f.optimal.iterrows():
            rows.append([f.label, _label(frame, point["config_hash"]), _fmt(point[f.x]), _fmt(point[ENERGY]),
                         str(int(point["runs"]))])  # fmt: skip
    left_out = found[0].left_out_fail
    note = ("Pareto-optimal configurations (means over cycles): no other configuration has both lower energy per "
            "output token and a better figure on the axis.")  # fmt: skip
    if left_out:
        note += f" {left_out} result(s) with verdict fail left out."
    return _table("Energy frontiers", ["Against", "Configuration", "Figure", "Energy/token (J)", "Runs"], rows, note)


def target_table(frame: pd.DataFrame, answer: TargetAnswer) -> Table:
    """The answer to `--slo`: the winner with its CI, the runners-up, and the fastest for contrast."""
    columns = list(dict.fromkeys(TARGETS[k][0] for k in answer.targets))
    rows = []
    roles: list[tuple[str, Any]] = []
    if answer.best is not None:
        roles.append(("lowest energy", answer.best))
        roles += [(f"runner-up {i + 1}", c) for i, c in enumerate(answer.runners_up)]
        if answer.fastest is not None and answer.fastest.config_hash != answer.best.config_hash:
            roles.append(("fastest", answer.fastest))
    elif answer.meeting:
        roles += [("meets targets", c) for c in answer.meeting]
    else:
        roles += [("misses " + ", ".join(names), c) for c, names in answer.misses]
    for role, choice in roles:
        ci = choice.energy_ci
        energy = _fmt(choice.energy_mean) + (f" ({_fmt(ci[0])}–{_fmt(ci[1])})" if ci else "")
        rows.append([role, _label(frame, choice.config_hash), energy, *(_fmt(choice.figures[c]) for c in columns)])
    note = answer.summary()
    if answer.missing:
        note += f" No configuration has a figure for: {', '.join(answer.missing)}."
    if answer.left_out_fail:
        note += f" {answer.left_out_fail} result(s) with verdict fail left out."
    title = "Cheapest configuration meeting " + ", ".join(f"{k}={v:g}" for k, v in answer.targets.items())
    # each figure headed by the target names the user gave for it (tpot_p99_ms is the ITL p99 column)
    names = [" / ".join(k for k in answer.targets if TARGETS[k][0] == c) for c in columns]
    return _table(title, ["Role", "Configuration", "Energy/token (J, 95% CI)", *names], rows, note)


def targets_for(frame: pd.DataFrame, targets: dict[str, float]) -> Table | None:
    return target_table(frame, cheapest_meeting(frame, targets)) if targets else None


def carbon_table(frame: pd.DataFrame, factors: Factors) -> Table | None:
    if not factors.any:
        return None
    table = per_config(frame, factors)
    headers = ["Configuration", "kWh / 1k tokens", "gCO2e / 1k tokens", "Cost / 1k tokens", "gCO2e / 1k requests",
               "Cost / 1k requests"]  # fmt: skip
    rows = [
        [_label(frame, r["config_hash"]), _fmt(r["kwh_per_1k_tokens"]), _fmt(r["gco2e_per_1k_tokens"]),
         _fmt(r["cost_per_1k_tokens"]), _fmt(r["gco2e_per_1k_requests"]), _fmt(r["cost_per_1k_requests"])]
        for _, r in table.iterrows()
    ]  # fmt: skip
    note = "Energy above idle, means over cycles. Factors: " + "; ".join(factors.sources()) + "."
    if not table[ENERGY].notna().any():
        note += (" No configuration has an energy figure (energy was not measured), so there are no emissions or "
                 "costs to give.")
    elif table[ENERGY].isna().any():
        note += " —: no energy figure for that configuration."
    return _table("Emissions and cost", headers, rows, note)


def differences_table(frames: Sequence[tuple[str, pd.DataFrame]]) -> Table | None:
    """Each later campaign against the first, per shared configuration and figure (Welch's t, 95 %)."""
    if len(frames) < 2:
        return None
    (name_a, a), rows = frames[0], []
    labels = dict(COMPARED)
    for name_b, b in frames[1:]:
        for d in compare_frames(a, b):
            ci = "—" if pd.isna(d.ci_low) else f"{_fmt(d.ci_low)} to {_fmt(d.ci_high)}"
            real = {True: "yes", False: "no (within noise)", None: "n/a (under 2 runs)"}[d.significant]
            rel = "—" if pd.isna(d.relative) else f"{d.relative * 100:+.1f}%"
            rows.append([f"{name_b} − {name_a}", _label(a, d.config_hash), labels.get(d.metric, d.metric),
                         f"{_fmt(d.mean_a)} (n={d.n_a})", f"{_fmt(d.mean_b)} (n={d.n_b})", f"{_fmt(d.diff)} ({rel})",
                         ci, real])  # fmt: skip
    if not rows:
        return None
    headers = ["Campaigns", "Configuration", "Figure", "A mean", "B mean", "B − A", "95% CI (Welch)",
               "Larger than noise"]  # fmt: skip
    note = ("Means over cycles; the interval is Welch's t (unequal variances). A difference is larger than the "
            "noise when its interval excludes zero. Results with verdict fail are left out.")  # fmt: skip
    return _table("Differences between campaigns", headers, rows, note)
