"""Serving plots: one line per server setting through its load points, sorted along x, with failed checks
hollow and missing figures left out with a note; offline campaigns get none.

The campaign is written as real result.json files plus a manifest whose swept values are text, as the
planner records them (`load.rate=inf` included), so the report reads it the way it reads a real one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from llem.atomic import atomic_write_text
from llem.measure.result import ExperimentResult, write_result
from llem.plan.manifest import CampaignManifest, ManifestJob, utc_now
from llem.report.collect import collect
from llem.report.render import write_report
from llem.report.serving_plots import (
    ENERGY_FILE,
    INVALID_GID,
    LATENCY_FILE,
    SETTING_GID,
    _configured_rate,
    energy_figure,
    latency_figure,
    serving_plots,
)
from llem.report.summary import read_summary, summary_frame

from .frames import hand_frame
from .test_plots import assert_png

SEQS = (4, 8)
RATES = ("4", "1", "inf", "2")  # job order is not x order
MEASURED_INF = {4: 5.5, 8: 7.0}  # requests/s measured at load.rate=inf, per max_num_seqs
CYCLE_SCALE = (1.0, 1.1)  # cycle 1 measures 10 % more: each point is the mean, 1.05 x the base figure
NO_TTFT = (4, "2")  # a load point whose TTFT p99 is null
FAILED = (8, "4", 1)  # (max_num_seqs, rate, cycle) whose serving checks failed


def _measured_rps(seqs: int, rate: str) -> float:
    return MEASURED_INF[seqs] if rate == "inf" else 0.97 * float(rate)  # a finite rate is plotted as configured


def _base(seqs: int, rate: str) -> dict[str, float]:
    """Known figures of one load point (cycle 0)."""
    rps = _measured_rps(seqs, rate)
    return {
        "ttft": 20.0 * seqs + 10.0 * rps,
        "tpot": 5.0 * seqs + rps,
        "rps": rps,
        "tps": 64.0 * rps,
        "j": 1.0 / (1.0 + rps) + 0.01 * seqs,
    }


def _dist(value: float | None) -> dict[str, Any]:
    return {"count": 0 if value is None else 10, "mean": value, "p50": value, "p95": value, "p99": value}


def _result(config_hash: str, params: dict[str, str], serving: dict[str, Any] | None, started: str) -> dict[str, Any]:
    """A minimal result.json that validates: offline-shaped fields without figures, and the serving section."""
    config: dict[str, Any] = {"backend": {"name": "vllm", "max_num_seqs": int(params["backend.max_num_seqs"])}}
    if "load.rate" in params:
        rate = float(params["load.rate"])
        config["load"] = {"rate": rate if math.isfinite(rate) else None}
    none = _dist(None)
    return ExperimentResult.model_validate(
        {
            "config_hash": config_hash, "backend": "vllm", "model": "m", "fp_precision": "float16",
            "config": config, "passes": 1, "num_prompts": 10, "input_tokens": 320, "output_tokens": 640,
            "duration_s": 40.0, "throughput_tokens_per_s": 16.0 * config["backend"]["max_num_seqs"],
            "requests_per_s": None,
            "latency": {"ttft_ms": none, "itl_ms": none, "e2e_ms": none, "queue_ms": none, "prefill_ms": none,
                        "method": "test"},
            "energy": {"source": "none", "total_j": None, "baseline_power_w": None, "adjusted_j": None,
                       "per_output_token_j": None},
            "flops": {"total": None, "per_output_token": None, "method": "test"},
            "memory": {"weights_bytes": None, "peak_allocated_bytes": None, "reserved_bytes": None},
            "model_load_s": 1.0, "model_reused": False, "warmup": {}, "engine_settings": {}, "environment": {},
            "timeseries_file": None, "started_at": started, "completed_at": started, "warnings": [],
            "serving": serving,
        }
    ).model_dump(mode="json")  # fmt: skip


def _serving(seqs: int, rate: str, cycle: int) -> dict[str, Any]:
    b, scale = _base(seqs, rate), CYCLE_SCALE[cycle]
    valid = (seqs, rate, cycle) != FAILED
    ttft = None if (seqs, rate) == NO_TTFT else b["ttft"] * scale
    return {
        "ttft_ms": {"p50": None if ttft is None else ttft / 2, "p99": ttft},
        "tpot_ms": {"p50": b["tpot"] * scale / 2, "p99": b["tpot"] * scale},
        "requests_per_s": b["rps"] * scale,
        "output_tokens_per_s": b["tps"] * scale,
        "goodput_rps": b["rps"] * scale,
        "steady": {"seconds": 40.0},
        "energy": {"j_per_output_token": b["j"] * scale, "j_per_request": b["j"] * scale * 64},
        "valid": valid,
        "failed": [] if valid else ["steady_window"],
    }


def _write_campaign(sweep: Path, points: list[tuple[dict[str, str], dict[str, Any] | None]], cycles: int = 2) -> Path:
    """One job per (point, cycle) under `sweep/<job>/result.json`, and a manifest with text params."""
    jobs = []
    keys = sorted({k for params, _ in points for k in params})
    for cycle in range(cycles):
        for i, (params, _) in enumerate(points):
            job = len(jobs)
            serving = points[i][1]
            if serving is not None:
                serving = _serving(int(params["backend.max_num_seqs"]), params["load.rate"], cycle)
            config_hash = f"{i:016x}"
            out = sweep / str(job)
            write_result(ExperimentResult.model_validate(
                _result(config_hash, params, serving, f"2026-01-01T00:{job:02d}:00+00:00")), out)  # fmt: skip
            jobs.append(ManifestJob(
                job_num=job, overrides=[f"{k}={v}" for k, v in params.items()], backend="vllm", cycle=cycle,
                config_hash=config_hash, params={"backend": "vllm", **params}, status="completed",
                result_path=str(out / "result.json"), attempts=1))  # fmt: skip
    now = utc_now()
    manifest = CampaignManifest(
        campaign_name=sweep.name, config_hash="feedfacefeedface", created_at=now, updated_at=now,
        sweep_dir=str(sweep), cycles=cycles, structure="interleaved", swept_keys=keys, jobs=jobs,
    )  # fmt: skip
    atomic_write_text(sweep / ".state" / "campaign_manifest.json", manifest.model_dump_json(indent=2) + "\n")
    return sweep


def _serving_points() -> list[tuple[dict[str, str], dict[str, Any] | None]]:
    return [({"backend.max_num_seqs": str(s), "load.rate": r}, {}) for s in SEQS for r in RATES]


@pytest.fixture
def serving_sweep(tmp_path: Path) -> Path:
    return _write_campaign(tmp_path / "serving-sweep", _serving_points())


@pytest.fixture
def serving_frame(serving_sweep: Path) -> pd.DataFrame:
    return summary_frame(collect(serving_sweep))


def _x(seqs: int, rate: str) -> float:
    return MEASURED_INF[seqs] * 1.05 if rate == "inf" else float(rate)  # inf: the measured rate's mean


def _expected(seqs: int, figure: str, x_of: Any, skip: tuple[int, str] | None = None) -> tuple[list[float], list[float]]:
    """The line of one setting: (x, y) of its load points (means over cycles), sorted by x."""
    points = sorted((x_of(seqs, r), _base(seqs, r)[figure] * 1.05) for r in RATES if (seqs, r) != skip)
    return [p[0] for p in points], [p[1] for p in points]


def _lines(figure: Figure, panel: int, gid: str) -> list[Line2D]:
    return [line for line in figure.axes[panel].get_lines() if line.get_gid() == gid]


def _by_label(lines: list[Line2D]) -> dict[str, Line2D]:
    return {str(line.get_label()): line for line in lines}


def test_summary_has_the_measured_request_rate(serving_sweep: Path) -> None:
    frame = summary_frame(collect(serving_sweep))
    assert "serving_requests_per_s" in frame.columns and frame["serving_requests_per_s"].dtype == "float64"
    inf = frame[frame["load.rate"] == "inf"].sort_values(["backend.max_num_seqs", "cycle"])
    assert list(inf["serving_requests_per_s"]) == pytest.approx([5.5, 6.05, 7.0, 7.7])


def test_latency_one_line_per_server_setting_in_rate_order(serving_frame: pd.DataFrame) -> None:
    drawn = latency_figure(serving_frame)
    assert drawn is not None and drawn.figure is not None
    labels = {f"vllm · backend.max_num_seqs={s}": s for s in SEQS}
    for panel, figure in ((0, "ttft"), (1, "tpot")):
        lines = _by_label(_lines(drawn.figure, panel, SETTING_GID))
        assert set(lines) == set(labels)  # one line per server setting, none per load point
        for label, seqs in labels.items():
            skip = NO_TTFT if figure == "ttft" else None
            x, y = _expected(seqs, figure, _x, skip)
            assert list(lines[label].get_xdata()) == pytest.approx(x)
            assert list(lines[label].get_ydata()) == pytest.approx(y)
            assert np.all(np.diff(lines[label].get_xdata()) > 0)
    # the TTFT panel leaves out the null point, and the note says so; inf is placed at the measured rate
    assert drawn.note is not None
    assert "TTFT p99 (ms): 1 load point(s) without a value" in drawn.note
    assert "2 load point(s) with load.rate inf or unset are placed at their measured request rate" in drawn.note


def test_failed_checks_are_hollow_and_noted(serving_frame: pd.DataFrame) -> None:
    drawn = latency_figure(serving_frame)
    assert drawn is not None and drawn.figure is not None
    for panel in (0, 1):
        hollow = _lines(drawn.figure, panel, INVALID_GID)
        assert len(hollow) == 1  # only max_num_seqs=8 has a failed point
        assert list(hollow[0].get_xdata()) == [4.0] and hollow[0].get_markerfacecolor() in ("white", "w", (1, 1, 1, 1))
        line = _by_label(_lines(drawn.figure, panel, SETTING_GID))["vllm · backend.max_num_seqs=8"]
        assert hollow[0].get_markeredgecolor() == line.get_color()
        filled = [line.get_xdata()[i] for i in line.get_markevery()]
        assert 4.0 not in filled and len(filled) == len(RATES) - 1  # the failed point has no filled marker
        other = _by_label(_lines(drawn.figure, panel, SETTING_GID))["vllm · backend.max_num_seqs=4"]
        assert len(other.get_markevery()) == len(other.get_xdata())
    assert drawn.note is not None and "Hollow markers: 1 load point(s)" in drawn.note
    assert "serving_valid false" in drawn.note


def test_energy_against_throughput_in_throughput_order(serving_frame: pd.DataFrame) -> None:
    drawn = energy_figure(serving_frame)
    assert drawn is not None and drawn.figure is not None
    lines = _by_label(_lines(drawn.figure, 0, SETTING_GID))
    assert set(lines) == {f"vllm · backend.max_num_seqs={s}" for s in SEQS}
    for seqs in SEQS:
        x, y = _expected(seqs, "j", lambda s, r: _base(s, r)["tps"] * 1.05)
        line = lines[f"vllm · backend.max_num_seqs={seqs}"]
        assert list(line.get_xdata()) == pytest.approx(x) and list(line.get_ydata()) == pytest.approx(y)
    assert len(_lines(drawn.figure, 0, INVALID_GID)) == 1
    assert drawn.note is not None and "Hollow markers: 1 load point(s)" in drawn.note


def test_report_writes_the_serving_pngs_and_their_notes(serving_sweep: Path, tmp_path: Path) -> None:
    files = write_report([serving_sweep], tmp_path / "report")
    names = {p.name for p in files.plots}
    assert {LATENCY_FILE, ENERGY_FILE} <= names
    for name in (LATENCY_FILE, ENERGY_FILE):
        assert_png(tmp_path / "report" / "plots" / name, min_colours=20)
    md = files.markdown.read_text()
    assert f"](plots/{LATENCY_FILE})" in md and f"](plots/{ENERGY_FILE})" in md
    assert "> Hollow markers: 1 load point(s)" in md
    assert "Hollow markers: 1 load point(s)" in files.html.read_text()
    summary = read_summary(serving_sweep / "summary.csv")
    assert summary["serving_requests_per_s"].notna().all()


def test_missing_energy_and_rate_are_left_out_never_zero(tmp_path: Path) -> None:
    sweep = _write_campaign(tmp_path / "no-energy", _serving_points(), cycles=1)
    for path in sweep.glob("*/result.json"):  # no energy anywhere; seqs=8 at inf has no measured rate either
        data = json.loads(path.read_text())
        data["serving"]["energy"]["j_per_output_token"] = None
        if data["config"]["backend"]["max_num_seqs"] == 8 and data["config"]["load"]["rate"] is None:
            data["serving"]["requests_per_s"] = None
        path.write_text(json.dumps(data))
    frame = summary_frame(collect(sweep))
    assert frame["serving_j_per_output_token"].isna().all()
    plots = {p.title: p for p in serving_plots(frame, tmp_path / "plots")}
    energy = plots["Serving energy per output token vs throughput"]
    assert energy.path is None and "no load point has both J per output token" in (energy.note or "")
    assert not (tmp_path / "plots" / ENERGY_FILE).exists()
    latency = latency_figure(frame)
    assert latency is not None and latency.figure is not None
    line = _by_label(_lines(latency.figure, 1, SETTING_GID))["vllm · backend.max_num_seqs=8"]
    assert list(line.get_xdata()) == pytest.approx([1.0, 2.0, 4.0])  # the inf point is gone, not at x=0
    assert "TPOT p99 (ms): 1 load point(s) without a value (or request rate) left out" in (latency.note or "")


def test_offline_sweep_gets_no_serving_plot(tmp_path: Path) -> None:
    assert serving_plots(hand_frame(), tmp_path / "frame") == []
    assert latency_figure(hand_frame()) is None and energy_figure(hand_frame()) is None
    sweep = _write_campaign(tmp_path / "offline", [({"backend.max_num_seqs": str(s)}, None) for s in SEQS])
    files = write_report([sweep], tmp_path / "report")
    assert files.plots  # the offline plots are drawn ...
    assert not any(p.name.startswith("serving_") for p in files.plots)  # ... and no serving one
    assert not list((tmp_path / "report" / "plots").glob("serving_*"))
    assert "Serving" not in files.markdown.read_text()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4", 4.0), ("0.5", 0.5), (2, 2.0), ("inf", None), ("Infinity", None), (float("inf"), None),
     (None, None), (pd.NA, None), ("null", None), (float("nan"), None)],
)  # fmt: skip
def test_configured_rate(value: Any, expected: float | None) -> None:
    assert _configured_rate(value) == expected
