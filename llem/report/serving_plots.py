"""Serving campaign plots: p99 latency against request rate, energy per output token against throughput.

A serving campaign sweeps load points (`load.*`, with `slo.*` targets) for each server setting (every
other swept value). Its questions are how latency grows with load and what a token costs at each
throughput, per server setting, so each setting is one line through its load points, sorted along x.
Points are each load point's means over its runs. A load point whose serving checks failed is drawn
hollow (its figures are kept, as in result.json), and a missing figure is left out with a note, never
drawn as 0. Offline campaigns get none of these plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from llem.report.gpu_axes import with_hashable_values
from llem.report.plots import Plot, _label, _new_figure, config_label
from llem.report.summary import param_columns

LOAD_PREFIXES = ("load.", "slo.")  # swept keys that make load points, not server settings
RATE = "load.rate"
MEASURED_RATE = "serving_requests_per_s"
THROUGHPUT = "serving_output_tokens_per_s"
ENERGY = "serving_j_per_output_token"
LATENCY_PANELS = (("serving_ttft_ms_p99", "TTFT p99 (ms)"), ("serving_tpot_ms_p99", "TPOT p99 (ms)"))
RATE_LABEL = "Request rate (requests/s)"
LATENCY_FILE = "serving_latency__request_rate.png"
ENERGY_FILE = "serving_energy__throughput.png"
SETTING_GID = "setting"  # gid of each server setting's line
INVALID_GID = "invalid"  # gid of the hollow markers over load points whose checks failed


@dataclass(frozen=True)
class Series:
    """One server setting's load points on one panel, sorted along x."""

    label: str
    x: np.ndarray
    y: np.ndarray
    valid: np.ndarray  # False where a run of the load point failed its serving checks


@dataclass
class Drawn:
    """A figure before it is saved (tests read its lines), or the note saying why there is none."""

    title: str
    figure: Figure | None
    note: str | None


def serving_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of load points: those with a serving section (any `serving_*` figure or check present)."""
    columns = [c for c in frame.columns if c.startswith("serving_")]
    if not len(frame) or not columns:
        return frame.iloc[0:0]
    return frame[frame[columns].notna().any(axis=1)]


def setting_columns(rows: pd.DataFrame) -> list[str]:
    """The columns telling server settings apart: backend and the swept values other than `load.*`/`slo.*`,
    where they differ between load points."""
    candidates = ["backend", *(c for c in param_columns(rows) if not c.startswith(LOAD_PREFIXES))]
    return [c for c in candidates if c in rows.columns and rows[c].astype("string").nunique(dropna=False) > 1]


def _configured_rate(value: Any) -> float | None:
    """`load.rate` as a finite positive number; None for inf, null, or a value that is not a number."""
    if value is None or value is pd.NA or isinstance(value, bool):
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError):
        return None
    return rate if math.isfinite(rate) and rate > 0 else None


def _mean(group: pd.DataFrame, column: str) -> float:
    if column not in group.columns:
        return float("nan")
    values = pd.to_numeric(group[column], errors="coerce").astype(float).dropna()
    return float(values.mean()) if len(values) else float("nan")


def load_points(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per load point (config_hash): its server setting's label, request rate (configured where
    finite, else measured, with `rate_measured`), means of the serving figures, and whether every run's
    checks passed."""
    rows = serving_rows(frame)
    if not len(rows):
        return pd.DataFrame()
    rows = with_hashable_values(rows, param_columns(rows))
    settings = setting_columns(rows)
    out = []
    for config_hash, group in rows.groupby("config_hash", sort=False, dropna=False):
        first = group.iloc[0]
        configured = _configured_rate(first[RATE]) if RATE in group.columns else None
        failed = "serving_valid" in group.columns and bool(group["serving_valid"].astype("boolean").eq(False).any())
        out.append(
            {
                "config_hash": config_hash,
                "setting": config_label(first, settings) if settings else _label(first["backend"]),
                "rate": configured if configured is not None else _mean(group, MEASURED_RATE),
                "rate_measured": configured is None,
                **{c: _mean(group, c) for c in (*(p for p, _ in LATENCY_PANELS), THROUGHPUT, ENERGY)},
                "valid": not failed,
                "runs": len(group),
            }
        )
    return pd.DataFrame(out)


def setting_series(points: pd.DataFrame, x: str, y: str) -> tuple[list[Series], int]:
    """One series per server setting (in order of first appearance) with its drawable points sorted by x,
    and how many load points were left out for a missing x or y."""
    usable = points[points[x].notna() & points[y].notna()]
    series = []
    for label in dict.fromkeys(points["setting"]):
        mine = usable[usable["setting"] == label].sort_values(x, kind="stable")
        if len(mine):
            series.append(
                Series(label, mine[x].to_numpy(float), mine[y].to_numpy(float), mine["valid"].to_numpy(bool))
            )
    return series, len(points) - len(usable)


def _draw(axes: Axes, series: list[Series]) -> bool:
    """The lines, filled markers on valid points and hollow ones on the others; True if any is hollow."""
    hollow = False
    for s in series:
        (line,) = axes.plot(s.x, s.y, marker="o", linestyle="-", label=s.label, gid=SETTING_GID,
                            markevery=[int(i) for i in np.flatnonzero(s.valid)])  # fmt: skip
        if not s.valid.all():
            hollow = True
            axes.plot(s.x[~s.valid], s.y[~s.valid], marker="o", linestyle="none", markerfacecolor="white",
                      markeredgecolor=line.get_color(), markeredgewidth=1.5, gid=INVALID_GID)  # fmt: skip
    axes.grid(True, alpha=0.3)
    return hollow


def _legend(axes: Axes, hollow: bool) -> None:
    handles, labels = axes.get_legend_handles_labels()
    if hollow:
        handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="white", markeredgecolor="0.3"))
        labels.append("serving checks failed")
    axes.legend(handles, labels, fontsize="small")


def _invalid_note(series: list[list[Series]]) -> str | None:
    """Says how many load points are hollow: the most drawn on any one panel."""
    failed = max(sum(int((~s.valid).sum()) for s in panel) for panel in series)
    if not failed:
        return None
    return (f"Hollow markers: {failed} load point(s) with a run whose serving checks failed (serving_valid false); "
            "their figures are shown as measured.")  # fmt: skip


def _lay_out(figure: Figure, note: str | None) -> None:
    """Tight layout, with the note (if any) written under the axes so the PNG carries it too."""
    if not note:
        figure.tight_layout()
        return
    figure.text(0.01, 0.01, note, fontsize="x-small", color="0.3", wrap=True, va="bottom")
    figure.tight_layout(rect=(0, 0.1, 1, 1))


def latency_figure(frame: pd.DataFrame) -> Drawn | None:
    """TTFT p99 and TPOT p99 against request rate, one panel each; None for a campaign with no load point."""
    title = "Serving p99 latency vs request rate"
    points = load_points(frame)
    if not len(points):
        return None
    panels = [(column, label, *setting_series(points, "rate", column)) for column, label in LATENCY_PANELS]
    if not any(series for _, _, series, _ in panels):
        return Drawn(title, None, "Serving latency: no load point has both a request rate and a TTFT or TPOT p99.")
    figure = _new_figure(11.0, 4.6)
    axes_pair = figure.subplots(1, 2, sharex=True)
    notes: list[str] = []
    hollow = False
    for axes, (column, label, series, left_out) in zip(axes_pair, panels):
        hollow = _draw(axes, series) or hollow
        axes.set_title(label)
        axes.set_xlabel(RATE_LABEL)
        axes.set_ylabel(label)
        if left_out:
            notes.append(f"{label}: {left_out} load point(s) without a value (or request rate) left out.")
    _legend(axes_pair[0], hollow)
    figure.suptitle(title)
    measured = points[points["rate_measured"] & points["rate"].notna()]
    if len(measured):
        notes.insert(0, f"{len(measured)} load point(s) with load.rate inf or unset are placed at their measured "
                        "request rate.")  # fmt: skip
    invalid = _invalid_note([series for _, _, series, _ in panels])
    note = " ".join(n for n in (invalid, *notes) if n) or None
    _lay_out(figure, note)
    return Drawn(title, figure, note)


def energy_figure(frame: pd.DataFrame) -> Drawn | None:
    """Energy per output token (steady window) against output-token throughput; None with no load point."""
    title = "Serving energy per output token vs throughput"
    points = load_points(frame)
    if not len(points):
        return None
    series, left_out = setting_series(points, THROUGHPUT, ENERGY)
    if not series:
        return Drawn(title, None, "Serving energy: no load point has both J per output token and a throughput "
                                  "(energy not measured?).")  # fmt: skip
    figure = _new_figure(6.8, 4.6)
    axes = figure.subplots()
    hollow = _draw(axes, series)
    axes.set_xlabel("Output-token throughput (tokens/s)")
    axes.set_ylabel("Energy per output token, steady window (J)")
    axes.set_title(title, fontsize="medium")
    _legend(axes, hollow)
    skipped = f"{left_out} load point(s) without J per output token or throughput left out." if left_out else None
    note = " ".join(n for n in (_invalid_note([series]), skipped) if n) or None
    _lay_out(figure, note)
    return Drawn(title, figure, note)


def serving_plots(frame: pd.DataFrame, out_dir: Path) -> list[Plot]:
    """The serving PNGs of one campaign (none for an offline campaign)."""
    plots = []
    for build, name in ((latency_figure, LATENCY_FILE), (energy_figure, ENERGY_FILE)):
        drawn = build(frame)
        if drawn is None:
            continue
        path = None
        if drawn.figure is not None:  # laid out already (the note sits under the axes)
            path = Path(out_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            drawn.figure.savefig(path, format="png")
        plots.append(Plot(drawn.title, path, drawn.note))
    return plots
