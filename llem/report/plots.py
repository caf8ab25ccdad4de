"""PNG plots of a campaign summary, drawn on matplotlib's Agg canvas.

Figures are built with `matplotlib.figure.Figure` + the Agg canvas rather than pyplot,
so no global backend is switched and nothing needs a display. A plot that would have
no data (energy on a machine without a meter) is not drawn: the caller gets a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llem.report.gpu_axes import LATENCY_LABELS, latency_plots, with_hashable_values
from llem.report.summary import param_columns

METRIC_LABELS: dict[str, str] = {
    "energy_per_output_token_j": "Energy per output token (J)",
    "throughput_tokens_per_s": "Throughput (output tokens/s)",
}
DPI = 100


@dataclass(frozen=True)
class Plot:
    """One figure of the report, or the reason it could not be drawn (`path` is None)."""

    title: str
    path: Path | None
    note: str | None = None


def _label(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "—"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def config_label(row: pd.Series, columns: Sequence[str]) -> str:
    """`backend · k=v, k=v` — a readable name for one configuration."""
    parts = [f"{c}={_label(row[c])}" for c in columns if c != "backend"]
    return f"{row['backend']}" + (f" · {', '.join(parts)}" if parts else "")


def per_config(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and sample std of `metric` per configuration, with the configuration's swept values."""
    params = param_columns(frame)
    rows = []
    for config_hash, group in frame.groupby("config_hash", sort=False):
        values = pd.to_numeric(group[metric], errors="coerce").astype(float).dropna()
        first = group.iloc[0]
        rows.append(
            {
                "config_hash": config_hash,
                "backend": first["backend"],
                **{c: first[c] for c in params},
                "n": len(values),
                "mean": float(values.mean()) if len(values) else np.nan,
                "std": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def plot_metric(frame: pd.DataFrame, metric: str, param: str, path: Path) -> Plot:
    """`metric` against one swept parameter: one series per backend (and per combination of the
    other swept values, so a line only joins configurations that differ in `param`); points are
    means over cycles, error bars one sample standard deviation."""
    label = METRIC_LABELS.get(metric) or LATENCY_LABELS.get(metric, metric)
    title = f"{label} vs {param}"
    data = per_config(frame, metric) if len(frame) else pd.DataFrame()
    if data.empty or data["n"].sum() == 0:
        return Plot(title, None, f"{label}: not measured in any completed job, so there is nothing to plot.")
    data = data[data["n"] > 0]
    data = data[data[param].notna()] if param in data.columns else data
    if data.empty:
        return Plot(title, None, f"{label}: no completed job with a value for {param}.")
    others = [c for c in param_columns(frame) if c != param]
    numeric = param != "backend" and _is_numeric(frame[param])
    categories = sorted({_label(v) for v in data[param]}) if not numeric else []
    series = list(dict.fromkeys(config_label(r, others) for _, r in data.iterrows()))
    figure = _new_figure(6.4, 4.2)
    axes = figure.subplots()
    width = 0.5 / max(len(series), 1)
    for i, name in enumerate(series):
        points = data[[config_label(r, others) == name for _, r in data.iterrows()]]
        if numeric:
            points = points.sort_values(param)
            x = points[param].astype(float).to_numpy()
        else:
            offset = (i - (len(series) - 1) / 2) * width if len(series) > 1 else 0.0
            x = np.array([categories.index(_label(v)) + offset for v in points[param]])
        axes.errorbar(
            x,
            points["mean"].to_numpy(dtype=float),
            yerr=points["std"].fillna(0.0).to_numpy(dtype=float),
            marker="o",
            capsize=4,
            linestyle="-" if numeric else "none",
            label=name,
        )
    if numeric:
        ticks = sorted({float(v) for v in data[param]})
        if len(ticks) <= 12:
            axes.set_xticks(ticks, [_label(t) for t in ticks])
    else:
        axes.set_xticks(range(len(categories)), categories)
    axes.set_xlabel(param)
    axes.set_ylabel(label)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return Plot(title, _save(figure, path))


def plot_latency(frame: pd.DataFrame, path: Path) -> Plot:
    """Latency distribution per configuration: p50, p95 and p99 of TTFT and ITL (means over cycles),
    with each cycle's p50 as a small dot so the spread between cycles shows too."""
    title = "Latency distribution per configuration"
    columns = [f"{m}_ms_{p}" for m in ("ttft", "itl") for p in ("p50", "p95", "p99")]
    if not len(frame) or frame[columns].isna().all().all():
        return Plot(title, None, "Latency: no completed job has latency figures.")
    params = param_columns(frame)
    configs = list(dict.fromkeys(frame["config_hash"]))
    names = [config_label(frame[frame["config_hash"] == h].iloc[0], params) for h in configs]
    figure = _new_figure(10.0, max(2.8, 1.2 + 0.45 * len(configs)))
    panels = figure.subplots(1, 2, sharey=True)
    y = np.arange(len(configs))
    for axes, metric, name in zip(panels, ("ttft", "itl"), ("Time to first token", "Inter-token latency")):
        for j, config_hash in enumerate(configs):
            group = frame[frame["config_hash"] == config_hash]
            p50, p95, p99 = (float(group[f"{metric}_ms_{p}"].astype(float).mean()) for p in ("p50", "p95", "p99"))
            axes.hlines(j, p50, p99, color="0.6", linewidth=2, zorder=1)
            cycle_p50 = group[f"{metric}_ms_p50"].astype(float).dropna()
            dots = "p50 of each cycle" if j == 0 else None
            axes.scatter(cycle_p50, np.full(len(cycle_p50), j), s=10, color="0.3", zorder=2, label=dots)
        for p, marker in (("p50", "o"), ("p95", "s"), ("p99", "^")):
            column = frame[f"{metric}_ms_{p}"].astype(float)
            means = [float(column[frame["config_hash"] == h].mean()) for h in configs]
            axes.scatter(means, y, marker=marker, s=40, zorder=3, label=p)
        axes.set_title(name)
        axes.set_xlabel("milliseconds")
        axes.grid(True, axis="x", alpha=0.3)
    panels[0].set_yticks(y, names)
    panels[0].invert_yaxis()
    panels[1].legend(fontsize="small")
    return Plot(title, _save(figure, path))


def make_plots(frame: pd.DataFrame, out_dir: Path) -> list[Plot]:
    """Every report figure for one campaign: each metric against each swept value, then latency."""
    out_dir = Path(out_dir)
    frame = with_hashable_values(frame, param_columns(frame))
    params = [c for c in param_columns(frame) if frame[c].nunique(dropna=True) > 1] or ["backend"]
    plots = []
    for metric in METRIC_LABELS:
        for param in params:
            name = f"{metric}__{_slug(param)}.png"
            plots.append(plot_metric(frame, metric, param, out_dir / name))
    plots += latency_plots(frame, params, out_dir, plot_metric)  # a GPU settings axis trades energy for latency
    plots.append(plot_latency(frame, out_dir / "latency.png"))
    return _merge_notes(plots)


def _merge_notes(plots: list[Plot]) -> list[Plot]:
    """The same "not measured" note once per metric instead of once per parameter."""
    out: list[Plot] = []
    seen: set[str] = set()
    for plot in plots:
        if plot.path is None and plot.note in seen:
            continue
        if plot.path is None and plot.note:
            seen.add(plot.note)
        out.append(plot)
    return out


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)
