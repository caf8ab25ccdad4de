"""summary.csv / summary.parquet from a real small CPU campaign, partial and damaged ones included."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from llem.report import ReportWarning, collect, read_summary, write_summary
from llem.report.collect import UNREADABLE, NotACampaign
from llem.report.summary import METRIC_COLUMNS, param_columns, summary_frame

pytestmark = pytest.mark.slow  # the campaign fixture runs the tiny model

HEADLINE = [
    "energy_total_j", "energy_adjusted_j", "energy_per_output_token_j", "throughput_tokens_per_s",
    "ttft_ms_p50", "ttft_ms_p95", "itl_ms_p50", "itl_ms_p95", "queue_ms_p50", "prefill_ms_p50", "flops_total", "memory_weights_bytes",
    "memory_peak_allocated_bytes", "prefill_energy_per_token_j", "decode_energy_per_token_j",
    "model_reused", "warnings_count",
]  # fmt: skip


def test_summary_has_one_row_per_completed_job(campaign_dir: Path) -> None:
    csv_path, parquet_path = write_summary(campaign_dir)
    assert (csv_path, parquet_path) == (campaign_dir / "summary.csv", campaign_dir / "summary.parquet")
    assert not [p for p in campaign_dir.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp left
    frame = pd.read_parquet(parquet_path)
    assert len(frame) == 6 and list(frame["job_num"]) == [0, 1, 2, 3, 4, 5]
    for column in ["job_num", "cycle", "backend", "config_hash", "backend.batch_size", *HEADLINE]:
        assert column in frame.columns, column
    assert param_columns(frame) == ["backend.batch_size"]  # `backend` is its own column, not a param
    assert set(frame["backend"]) == {"pytorch"}
    by_batch = frame.groupby("backend.batch_size")
    assert {k: sorted(g["cycle"]) for k, g in by_batch} == {2: [0, 1, 2], 4: [0, 1, 2]}
    assert {k: g["config_hash"].nunique() for k, g in by_batch} == {2: 1, 4: 1}
    assert (frame["throughput_tokens_per_s"] > 0).all() and (frame["ttft_ms_p50"] > 0).all()
    assert (frame["flops_total"] > 0).all() and (frame["memory_weights_bytes"] > 0).all()
    assert frame["memory_peak_allocated_bytes"].isna().all()  # CPU: no device allocator to read, null not 0
    assert (frame["memory_weights_kv_peak_bytes"] > frame["memory_weights_bytes"]).all()
    assert (frame["prefill_ms_p50"] > 0).all() and (frame["queue_ms_p50"] >= 0).all()
    assert (frame["output_tokens"] == 24).all() and (frame["warnings_count"] >= 0).all()
    assert frame["model_reused"].dtype == "boolean" and frame["model_reused"].iloc[1:].all()
    assert (frame["energy_source"] == "none").all()
    assert frame["energy_unavailable_reason"].str.contains("RAPL not available").all()


def test_unmeasured_energy_is_null_never_zero(campaign_dir: Path) -> None:
    csv_path, parquet_path = write_summary(campaign_dir)
    parquet = pd.read_parquet(parquet_path)
    raw_csv = pd.read_csv(csv_path, keep_default_na=False, dtype=str)
    for column in ("energy_total_j", "energy_adjusted_j", "energy_per_output_token_j"):
        assert parquet[column].isna().all() and parquet[column].dtype == "float64"
        assert (raw_csv[column] == "").all()  # an empty cell, not "0" or "nan"
    typed = read_summary(csv_path)
    assert typed["energy_per_output_token_j"].isna().all() and len(typed) == 6
    assert typed["model_reused"].dtype == "boolean"


def test_partial_campaign_counts_failed_and_pending_jobs(campaign_dir: Path) -> None:
    campaign = collect(campaign_dir)
    assert campaign.name == "tiny-batch" and campaign.total == 8
    assert campaign.counts == {"completed": 6, "failed": 1, "pending": 1}
    assert len(campaign.rows) == 6 and campaign.param_keys == ["backend.batch_size"]
    assert campaign.fixed == {"backend": "pytorch"}  # set on every job: a fixed setting, not a swept one
    assert not campaign.problems


def test_invalid_result_is_skipped_with_a_warning(campaign_copy: Path) -> None:
    (campaign_copy / "3" / "result.json").write_text('{"schema_version": "1.0", "backend": ')  # truncated
    data = json.loads((campaign_copy / "4" / "result.json").read_text())
    data["unexpected"] = 1  # a foreign schema
    (campaign_copy / "4" / "result.json").write_text(json.dumps(data))
    with pytest.warns(ReportWarning, match="not a valid result.json") as caught:
        campaign = collect(campaign_copy)
    assert len(caught) == 2
    assert campaign.counts == {"completed": 4, UNREADABLE: 2, "failed": 1, "pending": 1}
    assert sorted(row["job_num"] for row in campaign.rows) == [0, 1, 2, 5]
    assert len(campaign.problems) == 2
    with pytest.warns(ReportWarning):
        _, parquet = write_summary(campaign_copy)
    assert len(pd.read_parquet(parquet)) == 4


def test_completed_job_whose_result_vanished_is_counted_not_a_row(campaign_copy: Path) -> None:
    shutil.rmtree(campaign_copy / "5")
    with pytest.warns(ReportWarning, match="missing"):
        campaign = collect(campaign_copy)
    assert campaign.counts[UNREADABLE] == 1 and len(campaign.rows) == 5


def test_moved_sweep_dir_falls_back_to_job_dirs(campaign_copy: Path, campaign_dir: Path) -> None:
    manifest = json.loads((campaign_copy / ".state" / "campaign_manifest.json").read_text())
    assert manifest["jobs"][0]["result_path"].startswith(str(campaign_dir))  # paths point at the original
    moved = campaign_copy.rename(campaign_copy.parent / "moved")
    frame = summary_frame(collect(moved))
    assert len(frame) == 6 and all(p == f"{n}/result.json" for n, p in zip(frame["job_num"], frame["result_path"]))


def test_without_manifest_results_are_scanned(campaign_copy: Path) -> None:
    shutil.rmtree(campaign_copy / ".state")
    campaign = collect(campaign_copy)
    assert campaign.manifest is None and campaign.counts == {"completed": 6} and campaign.total == 6
    frame = summary_frame(campaign)
    assert param_columns(frame) == ["backend.batch_size"]
    assert sorted(frame["job_num"]) == [0, 1, 2, 3, 4, 5]
    # cycles follow start time within each configuration
    assert {k: sorted(g["cycle"]) for k, g in frame.groupby("backend.batch_size")} == {2: [0, 1, 2], 4: [0, 1, 2]}
    assert list(frame.sort_values("job_num")["cycle"]) == [0, 0, 1, 1, 2, 2]


def test_an_empty_dir_is_not_a_campaign(tmp_path: Path) -> None:
    with pytest.raises(NotACampaign, match="is not a campaign"):
        collect(tmp_path)
    with pytest.raises(NotACampaign):
        collect(tmp_path / "absent")


def test_summary_of_a_campaign_with_nothing_finished_has_the_columns(tmp_path: Path, campaign_dir: Path) -> None:
    state = tmp_path / ".state"
    state.mkdir()
    manifest = json.loads((campaign_dir / ".state" / "campaign_manifest.json").read_text())
    for job in manifest["jobs"]:
        job.update(status="pending", result_path=None)
    (state / "campaign_manifest.json").write_text(json.dumps(manifest))
    _, parquet = write_summary(tmp_path)
    frame = pd.read_parquet(parquet)
    assert len(frame) == 0 and "backend.batch_size" in frame.columns
    assert set(METRIC_COLUMNS) <= set(frame.columns)


def test_mixed_param_types_become_text(tmp_path: Path) -> None:
    from llem.report.collect import Campaign
    from llem.report.summary import write_frame

    rows = [
        {"job_num": i, "cycle": 0, "repetition": 0, "backend": "pytorch", "config_hash": f"h{i}",
         "params": {"x": value, "lst": [1, i]}, "result_path": f"{i}/result.json"}
        for i, value in enumerate([1, "auto", None, 2.5])
    ]  # fmt: skip
    frame = summary_frame(Campaign(tmp_path, "t", rows, ["x", "lst"], {"completed": 4}, 4))
    assert list(frame["x"].astype(object).where(frame["x"].notna(), None)) == ["1", "auto", None, "2.5"]
    assert frame["lst"].iloc[1] == "[1, 1]"
    assert frame["throughput_tokens_per_s"].isna().all()  # absent metrics stay null
    _, parquet = write_frame(frame, tmp_path)
    assert len(pd.read_parquet(parquet)) == 4
    assert math.isnan(pd.read_parquet(parquet)["energy_per_output_token_j"].iloc[0])
    assert os.listdir(tmp_path)


def test_summary_stats_are_written_beside_the_summary(campaign_copy: Path) -> None:
    write_summary(campaign_copy)
    by_config = pd.read_parquet(campaign_copy / "summary_stats.parquet")
    # no group_by: one group per configuration, keyed by the swept keys, then the config hash
    assert list(by_config.columns[:3]) == ["backend", "backend.batch_size", "config_hash"]
    assert sorted(by_config["backend.batch_size"]) == [2, 4] and list(by_config["cycles"]) == [3, 3]
    frame = pd.read_parquet(campaign_copy / "summary.parquet")
    for _, row in by_config.iterrows():
        runs = frame[frame["config_hash"] == row["config_hash"]]["throughput_tokens_per_s"]
        assert row["throughput_tokens_per_s_mean"] == pytest.approx(runs.mean())
        assert row["throughput_tokens_per_s_std"] == pytest.approx(runs.std(ddof=1))
    assert by_config["energy_per_output_token_j_mean"].isna().all()  # not measured here: null, not 0
    write_summary(campaign_copy, group_by=["model_reused"])
    by_reuse = pd.read_csv(campaign_copy / "summary_stats.csv").set_index("model_reused")
    assert by_reuse.loc[False, "cycles"] == 1 and by_reuse.loc[True, "cycles"] == 5
    assert by_reuse.loc[True, "configs"] == 2 and pd.isna(by_reuse.loc[True, "config_hash"])
    with pytest.warns(ReportWarning, match=r"no column colour [\s\S]*; statistics are grouped by configuration instead"):
        write_summary(campaign_copy, group_by=["colour"])  # never fails the end of a campaign
    assert len(pd.read_csv(campaign_copy / "summary_stats.csv")) == 2
