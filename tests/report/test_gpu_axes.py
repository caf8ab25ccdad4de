"""A campaign that sweeps a GPU setting gets energy per token and latency against it, one line per other setting."""

from __future__ import annotations

from pathlib import Path

from llem.report.plots import make_plots, per_config

from .frames import hand_frame
from .test_plots import assert_png


def _gpu_frame() -> "object":
    frame = hand_frame()
    frame = frame.rename(columns={"batch_size": "gpu.power_limit_w"})
    frame["gpu.power_limit_w"] = frame["gpu.power_limit_w"].map({1: 300, 4: 450, 16: 700})
    return frame


def test_a_swept_power_limit_gets_energy_and_latency_plots(tmp_path: Path) -> None:
    frame = _gpu_frame()
    plots = make_plots(frame, tmp_path)  # type: ignore[arg-type]
    names = sorted(p.path.name for p in plots if p.path is not None)
    assert names == [
        "energy_per_output_token_j__gpu_power_limit_w.png",
        "itl_ms_p50__gpu_power_limit_w.png",
        "latency.png",
        "throughput_tokens_per_s__gpu_power_limit_w.png",
        "ttft_ms_p50__gpu_power_limit_w.png",
    ]
    for name in ("energy_per_output_token_j__gpu_power_limit_w.png", "itl_ms_p50__gpu_power_limit_w.png"):
        assert_png(tmp_path / name)
    titles = [p.title for p in plots]
    assert "Inter-token latency, p50 (ms) vs gpu.power_limit_w" in titles
    # one line per other setting: one series per backend here, each over the three limits
    lines = per_config(frame, "itl_ms_p50")  # type: ignore[arg-type]
    assert sorted(lines.groupby("backend")["gpu.power_limit_w"].apply(sorted).tolist()) == [[300, 450, 700]] * 2


def test_a_swept_clock_range_plots_as_categories(tmp_path: Path) -> None:
    frame = hand_frame()
    frame = frame.rename(columns={"batch_size": "gpu.sm_clock_mhz"})
    frame["gpu.sm_clock_mhz"] = frame["gpu.sm_clock_mhz"].map({1: [990, 1410], 4: 1410, 16: 1980})
    plots = make_plots(frame, tmp_path)
    drawn = {p.path.name for p in plots if p.path is not None}
    assert {"ttft_ms_p50__gpu_sm_clock_mhz.png", "energy_per_output_token_j__gpu_sm_clock_mhz.png"} <= drawn
    assert_png(tmp_path / "ttft_ms_p50__gpu_sm_clock_mhz.png")
    assert frame["gpu.sm_clock_mhz"].map(type).eq(list).any()  # the caller's frame is left as it was
