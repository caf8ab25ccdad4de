"""Interactive frontier plots for report.html, drawn with Plotly and bundled so the page opens offline.

Each plot is energy per output token against one axis (latency percentiles, throughput):
one trace per backend (a legend click toggles it), frontier points solid and joined by a
line, dominated points faded, and hover showing the configuration and its figures. The
plotly.js bundle is written once into the page (no CDN). Plotly is one of llem's dependencies;
an environment that lacks it gets a note in the page and keeps the static PNGs.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import pandas as pd

from llem.report.frontier import ENERGY, Frontier, frontiers
from llem.report.plots import config_label
from llem.report.summary import param_columns

MISSING = "Interactive plots need Plotly (pip install plotly). The static plots below are unaffected."
FADED = 0.3


def available() -> bool:
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True


def plotly_bundle() -> str:
    """The `<script>` holding plotly.js itself, once per page."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def _figure(f: Frontier, params: Sequence[str]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    points = f.points
    labels = [config_label(row, params) for _, row in points.iterrows()]
    points = points.assign(_label=labels, _verdict=points.get("verdict", pd.Series(index=points.index, dtype=object)))
    hover = (
        "%{customdata[0]}<br>" + f"{f.label}: " + "%{x:.4g}<br>Energy/token: %{y:.4g} J<br>"
        "runs: %{customdata[1]}<br>%{customdata[2]}<extra></extra>"
    )
    for backend, group in points.groupby("backend", sort=True, dropna=False):
        custom = list(zip(group["_label"], group["runs"].astype(int),
                          ["on the frontier" if on else "dominated" for on in group["on_frontier"]]))  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=group[f.x], y=group[ENERGY], mode="markers", name=str(backend), legendgroup=str(backend),
                customdata=custom, hovertemplate=hover,
                marker={"size": 9, "opacity": [1.0 if on else FADED for on in group["on_frontier"]]},
            )
        )  # fmt: skip
    line = f.optimal
    fig.add_trace(
        go.Scatter(x=line[f.x], y=line[ENERGY], mode="lines", name="frontier", hoverinfo="skip",
                   line={"color": "black", "width": 1.5, "shape": "hv" if f.x_lower else "vh"})
    )  # fmt: skip
    fig.update_layout(
        title=f"Energy per output token against {f.label}", xaxis_title=f.label,
        yaxis_title="Energy per output token (J)", template="plotly_white", height=460, legend_title="backend",
    )  # fmt: skip
    return fig


def frontier_html(frame: pd.DataFrame, anchor: str) -> str:
    """The interactive plots of one campaign as HTML fragments (needs `plotly_bundle()` once in the page)."""
    if not available():
        return f'<p class="note">{html.escape(MISSING)}</p>'
    found = frontiers(frame)
    if not found:
        return '<p class="note">No energy figures: no frontier to draw.</p>'
    params = param_columns(frame)
    parts = []
    for i, f in enumerate(found):
        fig = _figure(f, params)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"{anchor}-frontier-{i}",
                                 config={"displaylogo": False}))  # fmt: skip
    left_out = found[0].left_out_fail
    note = "Hover a point for its configuration; click a backend in the legend to hide or show it."
    if left_out:
        note += f" {left_out} result(s) with verdict fail left out."
    return "\n".join([*parts, f'<p class="note">{html.escape(note)}</p>'])
