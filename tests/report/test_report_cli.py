"""`python -m llem.report`: report.md, report.html and PNGs from a real campaign; comparisons; errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pandas as pd

from llem.atomic import atomic_write_text
from llem.plan.manifest import read_manifest
from llem.report.__main__ import main
from llem.report.render import write_report

from .test_plots import assert_png

pytestmark = pytest.mark.slow  # the campaign fixture runs the tiny model

REPO = Path(__file__).resolve().parents[2]


def test_report_files_exist_and_plots_are_pngs(report_dir: Path, campaign_dir: Path) -> None:
    md = (report_dir / "report.md").read_text()
    page = (report_dir / "report.html").read_text()
    pngs = sorted((report_dir / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["latency.png", "throughput_tokens_per_s__backend_batch_size.png"]
    for png in pngs:
        assert_png(png, min_colours=10)
        assert f"](plots/{png.name})" in md
    # energy is not measured on this machine: a note stands in for its plot
    assert "Energy per output token (J): not measured in any completed job" in md
    assert "Energy: not measured — cpu: RAPL not available" in md
    assert "| completed | 6 |" in md and "| failed | 1 |" in md and "| pending | 1 |" in md
    assert md.count("pytorch · backend.batch_size=2 |") == 1 + 3  # stats row + three job rows
    assert "### Statistics by configuration" in md and "CV above 0.1" in md
    # the HTML stands alone: images inline, no references to files
    assert page.count('<img src="data:image/png;base64,') == 2 and "plots/" not in page
    assert page.count('<table class="llem-table">') == 4
    # jobs that did not complete are listed with their reasons (the pending one has not run: not listed)
    assert "### Jobs that did not complete" in md and "| 6 | failed |" in md and "| boom |" in md
    assert "| 7 | pending |" not in md
    assert (campaign_dir / "summary.csv").is_file() and (campaign_dir / "summary.parquet").is_file()


def test_default_output_is_the_sweep_dir_and_cli_prints_paths(campaign_copy: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "llem.report", str(campaign_copy), "--group-by", "backend.batch_size",
         "model_reused", "--cv-threshold", "0.5"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"report written to {campaign_copy / 'report.md'} and {campaign_copy / 'report.html'}" in run.stdout
    assert f"summary written to {campaign_copy / 'summary.csv'}" in run.stdout
    md = (campaign_copy / "report.md").read_text()
    assert "### Statistics by backend.batch_size, model_reused" in md and "CV above 0.5" in md
    assert "| backend.batch_size | model_reused | Configurations | Runs |" in md
    # the first job loaded the model, every later one reused it: batch 2 splits into 1 cold + 2 warm runs
    assert re.search(r"\| 2 \| no \| 1 \| 1 \|", md) and re.search(r"\| 2 \| yes \| 1 \| 2 \|", md)
    assert re.search(r"\| 4 \| yes \| 1 \| 3 \|", md)
    assert len(list((campaign_copy / "plots").glob("*.png"))) == 2


def test_campaign_group_by_from_the_manifest(campaign_copy: Path) -> None:
    """Without --group-by the report and summary_stats.* group by the campaign's group_by."""
    manifest_path = campaign_copy / ".state" / "campaign_manifest.json"
    manifest = read_manifest(manifest_path)
    manifest.group_by = ["backend"]
    atomic_write_text(manifest_path, manifest.model_dump_json(indent=2) + "\n")
    assert main([str(campaign_copy)]) == 0
    md = (campaign_copy / "report.md").read_text()
    assert "### Statistics by backend" in md and "| backend | Configurations | Runs |" in md
    assert "| pytorch | 2 | 6 |" in md  # both batch sizes pooled: 2 configurations, 6 runs
    stats = pd.read_csv(campaign_copy / "summary_stats.csv")
    assert list(stats["backend"]) == ["pytorch"] and list(stats["configs"]) == [2] and list(stats["cycles"]) == [6]
    assert stats["config_hash"].isna().all()  # a group of two configurations has no single hash
    frame = pd.read_csv(campaign_copy / "summary.csv")
    assert stats["throughput_tokens_per_s_mean"].iloc[0] == pytest.approx(frame["throughput_tokens_per_s"].mean())


def test_not_a_campaign_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a campaign dir" in err and str(tmp_path) in err
    assert main([str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "report.md").exists()


def test_unknown_group_by_exits_2(campaign_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(campaign_copy), "--group-by", "colour"]) == 2
    assert "no column colour" in capsys.readouterr().err


def test_damaged_result_is_reported_not_fatal(campaign_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (campaign_copy / "2" / "result.json").write_text("{")
    assert main([str(campaign_copy)]) == 0
    assert "warning:" in capsys.readouterr().err
    md = (campaign_copy / "report.md").read_text()
    assert "| unreadable | 1 |" in md and "Problem:" in md


def test_comparing_two_campaigns(campaign_dir: Path, campaign_copy: Path, tmp_path: Path) -> None:
    shutil.rmtree(campaign_copy / ".state")  # the second one without a manifest, as if copied without it
    out = tmp_path / "compare"
    files = write_report([campaign_dir, campaign_copy], out, seed=1)
    md = files.markdown.read_text()
    page = files.html.read_text()
    assert "# llem report: 2 campaigns compared" in md
    assert "### Campaigns compared" in md and "### Configurations measured in several campaigns" in md
    assert "## Campaign 1: tiny-batch" in md and "## Campaign 2: copied-campaign" in md
    assert re.search(r"\| tiny-batch \| .* \| 6 / 8 \| 1 \| 2 \|", md)
    assert re.search(r"\| copied-campaign \| .* \| 6 / 6 \| 0 \| 2 \|", md)
    assert page.count('<section class="campaign"') == 2
    dirs = sorted(p.name for p in (out / "plots").iterdir())
    assert dirs == ["1-tiny-batch", "2-copied-campaign"]
    assert len(files.plots) == 4 and all(p.is_file() for p in files.plots)
    assert page.count("data:image/png;base64,") == 4
