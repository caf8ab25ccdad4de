"""Carbon and cost factors from the campaign (`campaign.report`) or the report's command line, each with its
source; and the answer to targets no configuration meets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from llem.atomic import atomic_write_text
from llem.plan.manifest import CampaignManifest, ManifestJob, utc_now
from llem.report.__main__ import main
from llem.report.carbon import CAMPAIGN, COMMAND_LINE, J_PER_KWH, BadFactor, Factors
from llem.report.tables import fmt
from llem.report.target import cheapest_meeting

from .frames import hand_frame
from .synthetic import CONFIGS, write_campaign

REPO = Path(__file__).resolve().parents[2]


def test_campaign_factors_are_sourced_and_the_command_line_wins() -> None:
    campaign = Factors.from_campaign({"carbon_intensity": 250, "pue": 1.1, "price_per_kwh": None})
    given = Factors.from_values(400.0, None, 0.3)
    chosen = given.over(campaign)
    assert chosen.carbon_g_per_kwh is not None and chosen.carbon_g_per_kwh.value == 400.0
    assert chosen.carbon_g_per_kwh.source == COMMAND_LINE
    assert chosen.pue is not None and (chosen.pue.value, chosen.pue.source) == (1.1, CAMPAIGN)
    assert chosen.price_per_kwh is not None and chosen.price_per_kwh.source == COMMAND_LINE
    assert Factors().over(Factors.from_campaign({})) == Factors()  # no built-in default
    with pytest.raises(BadFactor, match="campaign.report.pue must be a number ≥ 1"):
        Factors.from_campaign({"pue": 0.5})


def test_targets_nobody_meets_show_how_far_each_misses() -> None:
    answer = cheapest_meeting(hand_frame(), {"ttft_p99_ms": 30.0, "tpot_p99_ms": 20.0})
    assert answer.meeting == [] and len(answer.misses) == 6
    # batch 1 and 4 (p99 ITL 9 and 18 ms) miss the TTFT target only; batch 16 (36 ms) misses both, so comes last
    assert [names for _, names in answer.misses] == [["ttft_p99_ms"]] * 4 + [["ttft_p99_ms", "tpot_p99_ms"]] * 2
    assert {c.row["batch_size"] for c, _ in answer.misses[-2:]} == {16}
    closest = answer.misses[0][0]
    assert answer.summary() == ("No configuration meets ttft_p99_ms ≤ 30, tpot_p99_ms ≤ 20. "
                                f"Closest: {closest.name} (ttft_p99_ms 36 > 30).")  # fmt: skip


@pytest.fixture(scope="module")
def template(campaign_dir: Path) -> dict[str, Any]:
    return json.loads((campaign_dir / "0" / "result.json").read_text())


def _with_manifest(sweep: Path, report: dict[str, Any]) -> Path:
    """A manifest over the synthetic campaign's jobs, holding the campaign's `report` section."""
    jobs = []
    for path in sorted(sweep.glob("*/result.json"), key=lambda p: int(p.parent.name)):
        result = json.loads(path.read_text())
        batch = result["config"]["backend"]["batch_size"]
        job_num = int(path.parent.name)
        jobs.append(ManifestJob(job_num=job_num, overrides=[f"backend.batch_size={batch}"], backend="pytorch",
                                cycle=job_num // len(CONFIGS), config_hash=result["config_hash"],
                                params={"backend.batch_size": batch}, status="completed",
                                result_path=str(path)))  # fmt: skip
    now = utc_now()
    manifest = CampaignManifest(campaign_name="factors", config_hash="feedfacefeedface", created_at=now,
                                updated_at=now, sweep_dir=str(sweep), cycles=4, structure="interleaved",
                                swept_keys=["backend.batch_size"], report=report, jobs=jobs)  # fmt: skip
    atomic_write_text(sweep / ".state" / "campaign_manifest.json", manifest.model_dump_json(indent=2) + "\n")
    return sweep


def _emissions(md: str) -> str:
    return md.split("### Emissions and cost\n", 1)[1].split("\n### ", 1)[0]


@pytest.mark.slow
def test_report_takes_factors_from_the_campaign_unless_the_command_line_gives_them(
    template: dict[str, Any], tmp_path: Path
) -> None:
    sweep = _with_manifest(write_campaign(template, tmp_path / "c", CONFIGS),
                           {"carbon_intensity": 250.0, "pue": 1.1, "price_per_kwh": 0.5})  # fmt: skip
    assert main([str(sweep)]) == 0
    section = _emissions((sweep / "report.md").read_text())
    assert f"carbon intensity 250 gCO2e/kWh ({CAMPAIGN})" in section
    assert f"PUE 1.1 ({CAMPAIGN})" in section and f"price 0.5 per kWh ({CAMPAIGN})" in section
    energy = pd.read_parquet(sweep / "summary.parquet").query("config_hash == 'synthetic0000004'")
    grams = energy["energy_per_output_token_j"].mean() * 1000 * 1.1 / J_PER_KWH * 250
    row = next(line for line in section.splitlines() if "backend.batch_size=4 |" in line)
    assert row.split(" | ")[2] == fmt(grams)

    assert main([str(sweep), "--carbon-intensity", "400", "--pue", "1.3"]) == 0
    section = _emissions((sweep / "report.md").read_text())
    assert f"carbon intensity 400 gCO2e/kWh ({COMMAND_LINE})" in section and f"PUE 1.3 ({COMMAND_LINE})" in section
    assert f"price 0.5 per kWh ({CAMPAIGN})" in section
    row = next(line for line in section.splitlines() if "backend.batch_size=4 |" in line)
    assert row.split(" | ")[2] == fmt(grams / 1.1 * 1.3 / 250 * 400)


@pytest.mark.slow
def test_no_factor_anywhere_shows_no_emissions_and_a_bad_campaign_factor_is_reported(
    template: dict[str, Any], tmp_path: Path
) -> None:
    sweep = _with_manifest(write_campaign(template, tmp_path / "c", CONFIGS, cycles=1), {})
    assert main([str(sweep)]) == 0
    assert "### Emissions and cost" not in (sweep / "report.md").read_text()
    sweep = _with_manifest(sweep, {"carbon_intensity": -3.0, "pue": None, "price_per_kwh": None})
    assert main([str(sweep)]) == 0
    md = (sweep / "report.md").read_text()
    assert "campaign.report.carbon_intensity must be a number ≥ 0, got -3.0" in md
    assert "### Emissions and cost" not in md


FAST = ["num_input_prompts=2", "max_output_tokens=3", "max_input_tokens=16", "warmup.num_prompts=0",
        "baseline.enabled=false", "campaign.execution.cycle_gap_seconds=0", "campaign.execution.warmup_prompts=0",
        "campaign.execution.cycles=1", "campaign.health_check.enabled=false", "backend.batch_size=1"]  # fmt: skip


def _llem(sweep: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", *FAST, *args],
                          capture_output=True, text=True, cwd=sweep.parent, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_a_real_campaign_records_its_factors_for_the_report(tmp_path: Path) -> None:
    """Keys from a campaign file and from `campaign.report.*` on the llem command line reach the manifest; the
    report uses them, its own options winning, and says where each came from."""
    (tmp_path / "factors.yaml").write_text("report:\n  carbon_intensity: 300\n  pue: 1.25\n")
    sweep = tmp_path / "sweep"
    run = _llem(sweep, f"campaign.file={tmp_path / 'factors.yaml'}", "campaign.report.price_per_kwh=0.2")
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = json.loads((sweep / ".state" / "campaign_manifest.json").read_text())
    assert manifest["report"] == {"carbon_intensity": 300.0, "pue": 1.25, "price_per_kwh": 0.2}
    assert main([str(sweep), "--pue", "1.5"]) == 0
    section = _emissions((sweep / "report.md").read_text())
    assert f"carbon intensity 300 gCO2e/kWh ({CAMPAIGN})" in section
    assert f"PUE 1.5 ({COMMAND_LINE})" in section and f"price 0.2 per kWh ({CAMPAIGN})" in section


@pytest.mark.slow
def test_a_bad_campaign_factor_stops_the_campaign_before_it_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "bad"
    run = _llem(sweep, "campaign.report.pue=0.5")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "campaign.report.pue" in run.stderr + run.stdout and "greater than or equal to 1" in run.stderr + run.stdout
    assert not (sweep / "0").exists()


@pytest.mark.slow
def test_targets_on_a_real_campaign_nobody_meets(campaign_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`--slo ttft_p99_ms=… --slo tpot_p99_ms=…` on measured CPU runs (no energy meter here): how far each misses."""
    assert main([str(campaign_dir), "--out", str(tmp_path), "--slo", "ttft_p99_ms=0.001", "--slo",
                 "tpot_p99_ms=50"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "No configuration meets ttft_p99_ms ≤ 0.001, tpot_p99_ms ≤ 50. Closest: pytorch · " in out
    assert "Energy was not measured." in out
    md = (tmp_path / "report.md").read_text()
    section = md.split("### Cheapest configuration meeting ttft_p99_ms=0.001, tpot_p99_ms=50\n", 1)[1]
    section = section.split("\n### ", 1)[0]
    assert "| Role | Configuration | Energy/token (J, 95% CI) | ttft_p99_ms | tpot_p99_ms |" in section
    assert section.count("| misses ttft_p99_ms") == 2 and "No rows yet" not in section
