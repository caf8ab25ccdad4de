"""A setting every job gives the same value (`num_input_prompts=4` on the command line) is not a swept key:
no column in the summaries, not in configuration labels, but on one "fixed settings" line of the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llem.atomic import atomic_write_text
from llem.plan.manifest import read_manifest
from llem.report.collect import collect
from llem.report.render import build_campaign_report, render_markdown
from llem.report.summary import write_summary

MANIFEST = Path(".state") / "campaign_manifest.json"


def _with_a_constant_override(sweep_dir: Path) -> None:
    """Every job as if run with `num_input_prompts=4` on the command line, as the planner records it."""
    manifest = read_manifest(sweep_dir / MANIFEST)
    for job in manifest.jobs:
        job.overrides = ["num_input_prompts=4", *job.overrides]
        job.params = {"num_input_prompts": "4", **job.params}
    atomic_write_text(sweep_dir / MANIFEST, manifest.model_dump_json(indent=2) + "\n")


def test_constant_override_gets_no_summary_column(campaign_copy: Path) -> None:
    _with_a_constant_override(campaign_copy)
    campaign = collect(campaign_copy)
    assert campaign.param_keys == ["backend.batch_size"]
    assert campaign.fixed == {"num_input_prompts": "4", "backend": "pytorch"}
    write_summary(campaign_copy)
    summary = pd.read_csv(campaign_copy / "summary.csv")
    stats = pd.read_csv(campaign_copy / "summary_stats.csv")
    assert "backend.batch_size" in summary.columns and "backend.batch_size" in stats.columns
    assert "num_input_prompts" not in summary.columns and "num_input_prompts" not in stats.columns
    assert len(stats) == 2  # one group per configuration, as before


def test_report_names_fixed_settings_once_and_labels_only_what_varies(campaign_copy: Path, tmp_path: Path) -> None:
    _with_a_constant_override(campaign_copy)
    report = build_campaign_report(campaign_copy, tmp_path / "plots")
    text = render_markdown([report], tmp_path, "report")
    assert "- Fixed settings: num_input_prompts=4, backend=pytorch" in text
    assert "- Swept: backend.batch_size" in text
    # the jobs that did not complete list the overrides they ran with; everywhere else the fixed-settings line only
    shown = text.split("### Jobs that did not complete", 1)[0] + text.split("### Plots", 1)[1]
    assert shown.count("num_input_prompts") == 1, shown
    assert "backend.batch_size=2" in text and "backend.batch_size=4" in text


def test_group_by_a_fixed_setting_keeps_its_column(campaign_copy: Path) -> None:
    _with_a_constant_override(campaign_copy)
    write_summary(campaign_copy, group_by=["num_input_prompts"])
    stats = pd.read_csv(campaign_copy / "summary_stats.csv")
    assert list(stats["num_input_prompts"]) == [4] and int(stats["configs"].iloc[0]) == 2
