"""A campaign driven from Python (llem.campaign.run_campaign): same plan, state and launcher as the CLI."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from llem.campaign import CampaignError, run_campaign
from llem.campaign.state import read_state
from tests.campaign import helpers as h


def _run(queue: Any, overrides: list[str], sweep: str) -> None:
    """In a fresh process: Hydra's global state and the worker's model cache start empty, as in a script."""
    try:
        outcome = run_campaign(overrides, sweep_dir=sweep)
        queue.put({"ok": outcome.ok, "counts": outcome.counts, "manifest": str(outcome.manifest_path),
                   "summary": str(outcome.summary_path), "failed": [j.job_num for j in outcome.failed]})
    except CampaignError as error:
        queue.put({"error": str(error)})


def run_in_process(overrides: list[str], sweep: Path) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(queue, overrides, str(sweep)))
    proc.start()
    proc.join(timeout=600)
    assert proc.exitcode == 0, f"the campaign process ended with {proc.exitcode}"
    return queue.get(timeout=10)


@pytest.mark.slow
def test_a_campaign_runs_and_resumes_from_python(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    overrides = [*h.FAST, "backend.batch_size=1,2", "campaign.execution.config_gap_seconds=0"]
    first = run_in_process(overrides, sweep)
    assert first["ok"] and first["counts"] == {"completed": 2}, first
    manifest = read_state(Path(first["manifest"]))
    assert manifest is not None and [j.status for j in manifest.jobs] == ["completed", "completed"]
    results = [json.loads(Path(j.result_path or "").read_text()) for j in manifest.jobs]
    assert sorted(r["config"]["backend"]["batch_size"] for r in results) == [1, 2]
    assert Path(first["summary"]).is_file()
    stamps = [Path(j.result_path or "").stat().st_mtime_ns for j in manifest.jobs]

    again = run_in_process(overrides, sweep)  # the same call resumes: nothing runs twice
    assert again["ok"] and again["counts"] == {"completed": 2}
    assert [Path(j.result_path or "").stat().st_mtime_ns for j in read_state(Path(first["manifest"])).jobs] == stamps


def test_a_mistake_in_the_campaign_raises_before_anything_launches(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    answer = run_in_process([*h.FAST, "backend.batch_size=1,-3"], sweep)
    assert "error" in answer and "batch_size" in answer["error"] and "nothing was launched" in answer["error"]
    assert not [p for p in sweep.iterdir() if p.name.isdigit()] if sweep.exists() else True
