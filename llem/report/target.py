"""The cheapest configuration that meets latency targets (`--slo ttft_p99_ms=200`).

A configuration meets a target when the mean of its figure over its cycles does; the
winner is the one with the lowest mean energy per output token among those that meet
every target, shown with its confidence interval, the runners-up, and what it gives up
against the fastest configuration that meets the targets. Results whose verdict is
`fail` are left out. Where no configuration has an energy figure (no readable meter),
the answer lists the configurations that meet the targets and says energy was not
measured, rather than picking one on a figure that does not exist. Where no configuration
meets the targets, the answer shows how far each one misses them, closest first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from llem.report.frontier import ENERGY, config_points, usable
from llem.report.stats import describe

# Target name -> (summary column, True when the figure must stay at or below the target).
TARGETS: dict[str, tuple[str, bool]] = {
    "ttft_p50_ms": ("ttft_ms_p50", True),
    "ttft_p95_ms": ("ttft_ms_p95", True),
    "ttft_p99_ms": ("ttft_ms_p99", True),
    "tpot_p50_ms": ("itl_ms_p50", True),
    "tpot_p95_ms": ("itl_ms_p95", True),
    "tpot_p99_ms": ("itl_ms_p99", True),
    "itl_p50_ms": ("itl_ms_p50", True),
    "itl_p95_ms": ("itl_ms_p95", True),
    "itl_p99_ms": ("itl_ms_p99", True),
    "e2e_p50_ms": ("e2e_ms_p50", True),
    "e2e_p99_ms": ("e2e_ms_p99", True),
    "min_throughput_tokens_per_s": ("throughput_tokens_per_s", False),
}
RUNNERS_UP = 3


class BadTarget(ValueError):
    """A `--slo` that is not NAME=NUMBER with a known NAME."""


def parse_targets(specs: Sequence[str]) -> dict[str, float]:
    """`["ttft_p99_ms=200", ...]` -> {"ttft_p99_ms": 200.0}; raises BadTarget naming the spec and the known names."""
    out: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or name not in TARGETS:
            raise BadTarget(f"--slo {spec!r}: expected NAME=NUMBER with NAME one of {', '.join(TARGETS)}")
        try:
            number = float(value)
        except ValueError:
            raise BadTarget(f"--slo {spec!r}: {value!r} is not a number") from None
        if not np.isfinite(number) or number <= 0:
            raise BadTarget(f"--slo {spec!r}: the target must be a positive number")
        out[name] = number
    return out


@dataclass
class Choice:
    """One configuration that meets the targets."""

    config_hash: str
    row: pd.Series
    energy_mean: float | None
    energy_ci: tuple[float, float] | None
    figures: dict[str, float]
    label: str = ""  # `backend · key=value, ...`

    @property
    def name(self) -> str:
        return self.label or self.config_hash


@dataclass
class TargetAnswer:
    targets: dict[str, float]
    best: Choice | None
    runners_up: list[Choice]
    meeting: list[Choice]
    fastest: Choice | None
    given_up: dict[str, float] = field(default_factory=dict)  # chosen minus fastest, per target figure
    energy_measured: bool = True
    left_out_fail: int = 0
    missing: list[str] = field(default_factory=list)  # targets no configuration has a figure for
    misses: list[tuple[Choice, list[str]]] = field(default_factory=list)  # none meets: each one's missed targets

    def _missed(self, choice: Choice, names: Sequence[str]) -> str:
        parts = []
        for name in names:
            column, at_most = TARGETS[name]
            value = choice.figures.get(column)
            shown = "no figure" if value is None or np.isnan(value) else f"{value:.4g}"
            parts.append(f"{name} {shown} {'>' if at_most else '<'} {self.targets[name]:g}")
        return ", ".join(parts)

    def summary(self) -> str:
        """One paragraph for people (also printed by `python -m llem.report --slo`)."""
        wanted = ", ".join(f"{k} ≤ {v:g}" if TARGETS[k][1] else f"{k} ≥ {v:g}" for k, v in self.targets.items())
        if not self.meeting:
            text = f"No configuration meets {wanted}."
            if self.misses:
                choice, names = self.misses[0]
                text += f" Closest: {choice.name} ({self._missed(choice, names)})."
            return text + ("" if self.energy_measured else " Energy was not measured.")
        if not self.energy_measured:
            names = "; ".join(c.name for c in self.meeting)
            return (f"{len(self.meeting)} configuration(s) meet {wanted}: {names}. Energy was not measured, so "
                    "none can be named the cheapest.")  # fmt: skip
        assert self.best is not None
        ci = self.best.energy_ci
        ci_text = f" (95% CI {ci[0]:.4g}–{ci[1]:.4g})" if ci else ""
        text = f"Lowest energy meeting {wanted}: {self.best.name} at {self.best.energy_mean:.4g} J/token{ci_text}."
        if self.given_up:
            parts = ", ".join(f"{k} +{v:.4g}" for k, v in self.given_up.items())
            text += f" Against the fastest ({self.fastest.name if self.fastest else '—'}): {parts}."
        return text


def _choice(row: pd.Series, frame: pd.DataFrame, columns: Sequence[str]) -> Choice:
    runs = frame[frame["config_hash"] == row["config_hash"]]
    stats = describe(runs[ENERGY]) if ENERGY in runs.columns else None
    energy = None if stats is None or stats.n == 0 else stats.mean
    ci = None if stats is None or np.isnan(stats.ci_low) else (stats.ci_low, stats.ci_high)
    from llem.report.plots import config_label
    from llem.report.summary import param_columns

    label = config_label(row, [c for c in param_columns(frame) if c in row.index])
    return Choice(str(row["config_hash"]), row, energy, ci, {c: float(row[c]) for c in columns}, label)


def cheapest_meeting(frame: pd.DataFrame, targets: Mapping[str, float]) -> TargetAnswer:
    """The lowest-energy configuration of a summary frame that meets every target (see the module docstring)."""
    unknown = [k for k in targets if k not in TARGETS]
    if unknown:
        raise BadTarget(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    rows, failed = usable(frame)
    columns = list(dict.fromkeys(TARGETS[k][0] for k in targets))
    missing = [k for k in targets if TARGETS[k][0] not in rows.columns or rows[TARGETS[k][0]].isna().all()]
    answer = TargetAnswer(dict(targets), None, [], [], None, left_out_fail=failed, missing=missing)
    if missing or not len(rows):
        answer.energy_measured = bool(len(rows)) and rows[ENERGY].notna().any()
        return answer
    points = config_points(rows, [*columns, ENERGY])
    ok = pd.Series(True, index=points.index)
    for name, limit in targets.items():
        column, at_most = TARGETS[name]
        ok &= points[column] <= limit if at_most else points[column] >= limit
    meeting = points[ok.fillna(False).astype(bool)]
    answer.energy_measured = bool(points[ENERGY].notna().any())
    first = TARGETS[next(iter(targets))]
    by_speed = meeting.sort_values(first[0], ascending=first[1], kind="stable")
    answer.meeting = [_choice(r, rows, columns) for _, r in by_speed.iterrows()]
    if not answer.meeting:
        answer.misses = _misses(points, rows, columns, targets)
        return answer
    answer.fastest = answer.meeting[0]
    with_energy = meeting[meeting[ENERGY].notna()].sort_values(ENERGY, kind="stable")
    if answer.energy_measured and len(with_energy):
        ranked = [_choice(r, rows, columns) for _, r in with_energy.iterrows()]
        answer.best, answer.runners_up = ranked[0], ranked[1 : 1 + RUNNERS_UP]
        for name in targets:
            column, at_most = TARGETS[name]
            delta = answer.best.figures[column] - answer.fastest.figures[column]
            answer.given_up[name] = delta if at_most else -delta
    return answer


def _misses_one(point: pd.Series, name: str, limit: float) -> bool:
    column, at_most = TARGETS[name]
    value = float(point[column])
    return bool(np.isnan(value) or (value > limit if at_most else value < limit))


def _shortfall(point: pd.Series, name: str, limit: float) -> float:
    """How far a figure misses its target, relative to the target (inf: no figure)."""
    column, at_most = TARGETS[name]
    value = float(point[column])
    return float("inf") if np.isnan(value) else max(0.0, (value - limit if at_most else limit - value) / limit)


def _misses(points: pd.DataFrame, rows: pd.DataFrame, columns: Sequence[str],
            targets: Mapping[str, float]) -> list[tuple[Choice, list[str]]]:  # fmt: skip
    """Every configuration with the targets it misses, closest first: fewest missed, then the smallest relative
    shortfall on the worst of them."""
    ranked = []
    for _, point in points.iterrows():
        missed = [name for name, limit in targets.items() if _misses_one(point, name, limit)]
        worst = max((_shortfall(point, name, targets[name]) for name in missed), default=0.0)
        ranked.append((len(missed), worst, point, missed))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [(_choice(point, rows, columns), missed) for _, _, point, missed in ranked]


def cheapest_meeting_dir(sweep_dir: str, targets: Mapping[str, float] | Sequence[str]) -> TargetAnswer:
    """From Python: `cheapest_meeting_dir("multirun/x", {"ttft_p99_ms": 200})` on a campaign's sweep dir."""
    from pathlib import Path

    from llem.report.collect import collect
    from llem.report.summary import summary_frame

    parsed = parse_targets(list(targets)) if not isinstance(targets, Mapping) else dict(targets)
    return cheapest_meeting(summary_frame(collect(Path(sweep_dir))), parsed)
