"""Static PNGs of the energy frontiers, for papers and for report.md (report.html adds interactive ones).

Same points as `llem.report.frontier`: each configuration's means over cycles, one colour per
backend, frontier points solid and joined by a step line, dominated points faded.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llem.report.frontier import ENERGY, Frontier, frontiers
from llem.report.plots import Plot, _new_figure, _save

FADED = 0.3


def plot_frontier(f: Frontier, path: Path) -> Plot:
    title = f"Energy per output token vs {f.label}: frontier"
    figure = _new_figure(6.4, 4.2)
    axes = figure.subplots()
    for backend, group in f.points.groupby("backend", sort=True, dropna=False):
        on = group[group["on_frontier"]]
        off = group[~group["on_frontier"]]
        line = axes.scatter(on[f.x], on[ENERGY], label=str(backend), zorder=3)
        axes.scatter(off[f.x], off[ENERGY], color=line.get_facecolor(), alpha=FADED, zorder=2)
    optimal = f.optimal
    axes.step(optimal[f.x], optimal[ENERGY], where="post" if f.x_lower else "pre", color="black", linewidth=1,
              label="frontier", zorder=1)  # fmt: skip
    axes.set_xlabel(f.label)
    axes.set_ylabel("Energy per output token (J)")
    axes.set_title(title, fontsize="medium")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    note = f"{f.left_out_fail} result(s) with verdict fail left out." if f.left_out_fail else None
    return Plot(title, _save(figure, path), note)


def frontier_plots(frame: pd.DataFrame, out_dir: Path) -> list[Plot]:
    """One PNG per frontier that has data (none without energy figures)."""
    return [plot_frontier(f, Path(out_dir) / f"frontier__{f.x}.png") for f in frontiers(frame)]
