"""Plots: valid PNGs for measured metrics, a note instead of a plot for unmeasured ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llem.report.plots import make_plots, per_config, plot_latency, plot_metric

from .frames import hand_frame

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_colours: int = 3) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width >= 300 and image.height >= 200
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) >= min_colours  # something was drawn


def test_energy_plot_with_measured_energy(tmp_path: Path) -> None:
    plot = plot_metric(hand_frame(), "energy_per_output_token_j", "batch_size", tmp_path / "e.png")
    assert plot.path == tmp_path / "e.png" and plot.note is None
    assert_png(plot.path, min_colours=20)


def test_per_config_means_and_error_bars() -> None:
    data = per_config(hand_frame(), "energy_per_output_token_j").set_index("config_hash")
    row = data.loc["py00000000000004"]
    values = 0.8 / 4 * np.array([1.0, 1.03, 1.06])
    assert row["n"] == 3 and row["batch_size"] == 4 and row["backend"] == "pytorch"
    assert row["mean"] == pytest.approx(values.mean()) and row["std"] == pytest.approx(values.std(ddof=1))


def test_all_null_energy_gives_a_note_not_a_plot(tmp_path: Path) -> None:
    frame = hand_frame()
    frame["energy_per_output_token_j"] = np.nan
    plot = plot_metric(frame, "energy_per_output_token_j", "batch_size", tmp_path / "e.png")
    assert plot.path is None and "not measured" in (plot.note or "")
    assert not (tmp_path / "e.png").exists()


def test_categorical_parameter_and_latency(tmp_path: Path) -> None:
    frame = hand_frame()
    frame.loc[frame["batch_size"] == 16, "fp_precision"] = "bfloat16"
    plot = plot_metric(frame, "throughput_tokens_per_s", "fp_precision", tmp_path / "t.png")
    assert plot.path is not None
    assert_png(plot.path, min_colours=20)
    latency = plot_latency(frame, tmp_path / "latency.png")
    assert latency.path is not None
    assert_png(latency.path, min_colours=20)


def test_make_plots_covers_each_varying_parameter(tmp_path: Path) -> None:
    frame = hand_frame()
    plots = make_plots(frame, tmp_path)
    names = sorted(p.path.name for p in plots if p.path is not None)
    # fp_precision is constant here, so only batch_size is plotted against
    assert names == [
        "energy_per_output_token_j__batch_size.png",
        "latency.png",
        "throughput_tokens_per_s__batch_size.png",
    ]
    frame["energy_per_output_token_j"] = np.nan
    frame.loc[frame["batch_size"] == 16, "fp_precision"] = "bfloat16"
    plots = make_plots(frame, tmp_path / "second")
    notes = [p.note for p in plots if p.path is None]
    assert len(notes) == 1 and "Energy per output token" in notes[0]  # one note, not one per parameter
    assert len([p for p in plots if p.path is not None]) == 3  # throughput x 2 parameters + latency
