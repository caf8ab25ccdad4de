"""Report figures for the GPU settings axes (`gpu.power_limit_w`, `gpu.sm_clock_mhz`, `gpu.mem_clock_mhz`).

Sweeping a power limit or a clock trades energy for latency, so a campaign that sweeps one gets
latency against it too (energy per token against every swept key is drawn for all axes), one line
per combination of the other swept values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

GPU_AXES = ("gpu.power_limit_w", "gpu.sm_clock_mhz", "gpu.mem_clock_mhz")
LATENCY_LABELS: dict[str, str] = {
    "ttft_ms_p50": "Time to first token, p50 (ms)",
    "itl_ms_p50": "Inter-token latency, p50 (ms)",
}


def _cell(value: Any) -> Any:
    """A clock range ([min, max]) as one hashable label, so it groups and plots as a category."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return value


def with_hashable_values(frame: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """`frame` with list values of the swept columns (clock ranges) turned into labels."""
    out = frame
    for column in params:
        if column in frame.columns and frame[column].map(lambda v: isinstance(v, (list, tuple))).any():
            out = out if out is not frame else frame.copy()
            out[column] = frame[column].map(_cell)
    return out


def latency_plots(frame: pd.DataFrame, params: Sequence[str], out_dir: Path,
                  plot_metric: Callable[[pd.DataFrame, str, str, Path], Any]) -> list[Any]:  # fmt: skip
    """Latency against each swept GPU settings axis (`plot_metric` draws one metric against one key)."""
    plots = []
    for param in (p for p in params if p in GPU_AXES):
        slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in param)
        for metric in LATENCY_LABELS:
            plots.append(plot_metric(frame, metric, param, Path(out_dir) / f"{metric}__{slug}.png"))
    return plots
