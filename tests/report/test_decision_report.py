"""`python -m llem.report` on synthetic campaigns with energy: verdicts, frontier, target, differences, carbon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from llem.report.__main__ import main
from llem.report.target import cheapest_meeting_dir

from .synthetic import CONFIGS, write_campaign
from .test_plots import assert_png

pytestmark = pytest.mark.slow  # the template comes from the campaign fixture (the tiny model)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template(campaign_dir: Path) -> dict[str, Any]:
    return json.loads((campaign_dir / "0" / "result.json").read_text())


def test_report_shows_verdicts_frontier_target_and_carbon(template: dict[str, Any], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    sweep = write_campaign(template, tmp_path / "a", CONFIGS, fail_jobs=(0,))
    code = main([str(sweep), "--slo", "ttft_p99_ms=60", "--slo", "tpot_p99_ms=25", "--carbon-intensity", "400",
                 "--pue", "1.2", "--price-per-kwh", "0.3"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "Lowest energy meeting ttft_p99_ms ≤ 60, tpot_p99_ms ≤ 25: pytorch · backend.batch_size=4" in out
    md = (sweep / "report.md").read_text()
    assert "✗ fail" in md and "✓ pass" in md
    assert "### Verdict reasons" in md and "| 0 | ✗ fail | energy_below_idle |" in md
    assert "### Energy frontiers" in md and "1 result(s) with verdict fail left out" in md
    assert "### Cheapest configuration meeting ttft_p99_ms=60, tpot_p99_ms=25" in md
    assert "| lowest energy | pytorch · backend.batch_size=4 |" in md
    assert "| fastest | pytorch · backend.batch_size=1 |" in md
    assert "### Emissions and cost" in md and "400 gCO2e/kWh (command line)" in md and "PUE 1.2" in md
    # static frontier plots for the Markdown report and papers, one per axis with data
    for axis in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p99", "e2e_ms_p99", "throughput_tokens_per_s"):
        assert f"](plots/frontier__{axis}.png)" in md
        assert_png(sweep / "plots" / f"frontier__{axis}.png", min_colours=10)
    summary = pd.read_parquet(sweep / "summary.parquet")
    assert summary.loc[summary["job_num"] == 0, "verdict"].item() == "fail"
    assert summary.loc[summary["job_num"] == 0, "verdict_reasons"].item().startswith("energy_below_idle (")
    assert (summary.loc[summary["job_num"] != 0, "verdict"] == "pass").all()
    stats = pd.read_parquet(sweep / "summary_stats.parquet")
    assert set(stats["verdict"]) == {"fail", "pass"}
    # the same answer from Python
    answer = cheapest_meeting_dir(str(sweep), ["ttft_p99_ms=60", "tpot_p99_ms=25"])
    assert answer.best is not None and answer.best.config_hash == "synthetic0000004" and answer.left_out_fail == 1


def test_two_campaigns_show_real_and_noise_differences(template: dict[str, Any], tmp_path: Path) -> None:
    before = write_campaign(template, tmp_path / "before", CONFIGS, seed=1, noise=0.01)
    after = write_campaign(template, tmp_path / "after", CONFIGS, seed=2, noise=0.01, energy_scale=0.85)
    assert main([str(before), str(after), "--out", str(tmp_path / "ab")]) == 0
    md = (tmp_path / "ab" / "report.md").read_text()
    assert "### Differences between campaigns" in md
    energy_rows = [line for line in md.splitlines() if "| after − before |" in line and "Energy/token" in line]
    assert len(energy_rows) == 3 and all(line.endswith("| yes |") for line in energy_rows)
    ttft_rows = [line for line in md.splitlines() if "| after − before |" in line and "TTFT p50" in line]
    assert len(ttft_rows) == 3 and all("no (within noise)" in line for line in ttft_rows)


def test_bad_slo_and_factor_are_usage_errors(template: dict[str, Any], tmp_path: Path) -> None:
    sweep = write_campaign(template, tmp_path / "a", CONFIGS, cycles=1)
    for args, message in (
        (["--slo", "ttft_p99=200"], "--slo 'ttft_p99=200': expected NAME=NUMBER"),
        (["--pue", "0.7"], "--pue must be a number ≥ 1"),
    ):
        run = subprocess.run([sys.executable, "-m", "llem.report", str(sweep), *args], capture_output=True, text=True,
                             cwd=REPO, timeout=120)  # fmt: skip
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
        assert not (sweep / "report.md").exists()


def test_targets_without_energy_say_energy_was_not_measured(campaign_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main([str(campaign_dir), "--out", str(tmp_path), "--slo", "ttft_p99_ms=100000"]) == 0
    out = capsys.readouterr().out
    assert "configuration(s) meet ttft_p99_ms ≤ 100000" in out and "Energy was not measured" in out
    md = (tmp_path / "report.md").read_text()
    assert md.count("| meets targets |") == 2
