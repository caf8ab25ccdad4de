"""`python -m llem -m ...` through the llem sweeper: plans, errors, dry runs, real launches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llem.measure.result import read_result
from llem.plan.manifest import read_manifest

pytestmark = [pytest.mark.slow]  # every test runs `python -m llem` in a subprocess

FAST = ["num_input_prompts=2", "max_output_tokens=3", "warmup.num_prompts=0", "max_input_tokens=16",
        "campaign.execution.config_gap_seconds=0", "campaign.execution.cycle_gap_seconds=0"]


def _multirun(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
    )


def _manifest(tmp_path: Path) -> Any:
    return read_manifest(tmp_path / "sweep" / ".state" / "campaign_manifest.json")


def test_dry_run_of_the_worked_example(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, "campaign=example", "hydra.sweeper.dry_run=true")
    assert proc.returncode == 0, proc.stderr
    assert "per backend: pytorch: 18 pending; vllm: 18 pending" in proc.stdout
    assert "fp_precision=bfloat16 backend.batch_size=8" in proc.stdout and "dry run: nothing launched" in proc.stdout
    m = _manifest(tmp_path)
    assert m.campaign_name == "example" and m.cycles == 3 and len(m.jobs) == 36
    assert [j.cycle for j in m.jobs[:12]] == [0] * 12 and m.jobs[12].cycle == 1  # interleaved
    assert {j.status for j in m.jobs} == {"pending"}
    assert not any((tmp_path / "sweep").glob("*/result.json"))
    assert (tmp_path / "sweep" / "multirun.yaml").exists()


def test_cli_scoped_sweep_and_execution_settings(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, "backend=pytorch,vllm", "backend.batch_size=1,4", "backend.max_num_seqs=8,16",
                     "campaign.execution.cycles=1", "campaign.execution.structure=grouped", "hydra.sweeper.dry_run=true")
    assert proc.returncode == 0, proc.stderr
    m = _manifest(tmp_path)
    assert [j.overrides for j in m.jobs] == [
        ["backend=pytorch", "backend.batch_size=1"], ["backend=pytorch", "backend.batch_size=4"],
        ["backend=vllm", "backend.max_num_seqs=8"], ["backend=vllm", "backend.max_num_seqs=16"],
    ]
    assert m.structure == "grouped" and m.cycles == 1


def test_sweep_syntax_range_and_glob(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, "backend=glob(py*)", "backend.batch_size=range(1,4)", "campaign.execution.cycles=1",
                     "hydra.sweeper.dry_run=true")
    assert proc.returncode == 0, proc.stderr
    assert [j.params["backend.batch_size"] for j in _manifest(tmp_path).jobs] == ["1", "2", "3"]


def test_invalid_jobs_stop_everything_with_every_problem(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, "backend=pytorch,tensorrt", "fp_precision=float32,float16,float64")
    assert proc.returncode != 0
    assert "3 of 6 planned configuration(s) are invalid; nothing was launched" in proc.stderr
    assert "[backend=tensorrt fp_precision=float32]" in proc.stderr
    assert proc.stderr.count("fp_precision: Input should be 'float32', 'float16' or 'bfloat16' (got 'float64')") == 2
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep" / ".state").exists() and not (tmp_path / "sweep" / "0").exists()


def test_unknown_scoped_key_is_an_error(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, "backend=pytorch,vllm", "backend.beam_width=1,2")
    assert proc.returncode != 0 and "backend.beam_width: no selected backend (pytorch, vllm)" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_real_campaign_with_skip_invalid(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, *FAST, "backend.batch_size=1,2", "fp_precision=float32,float64",
                     "campaign.execution.cycles=2", "hydra.sweeper.skip_invalid=true", "hydra/launcher=basic")
    assert proc.returncode == 0, proc.stderr
    m = _manifest(tmp_path)
    assert m.counts() == {"completed": 4, "skipped": 2}
    for job in m.jobs:
        if job.status == "completed":
            result = read_result(Path(job.result_path or ""))
            assert result.config_hash == job.config_hash and job.attempts == 1 and job.completed_at
            assert result.config["backend"]["batch_size"] == int(job.params["backend.batch_size"])
        else:
            assert "float64" in (job.error or "")
    assert (tmp_path / "sweep" / "summary.csv").exists()


@pytest.mark.slow
def test_failed_job_is_recorded_and_campaign_continues(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, *FAST, "energy.source=nvml,none", "campaign.execution.cycles=1", "hydra/launcher=basic")
    assert proc.returncode != 0 and "1 job(s) failed" in proc.stderr
    m = _manifest(tmp_path)
    failed = [j for j in m.jobs if j.status == "failed"]
    assert len(failed) == 1 and "energy.source=nvml is not available here" in (failed[0].error or "")
    assert [j.status for j in m.jobs if j.params["energy.source"] == "none"] == ["completed"]


@pytest.mark.slow
def test_max_batch_size_and_submitit_local(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, *FAST, "backend.batch_size=1,2,3", "campaign.execution.cycles=1",
                     "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "hydra.sweeper.max_batch_size=2",
                     timeout=600)
    assert proc.returncode == 0, proc.stderr
    m = _manifest(tmp_path)
    assert m.counts() == {"completed": 3}
    for job in m.jobs:
        assert Path(job.result_path or "").exists()
    data = json.loads(Path(m.jobs[2].result_path or "").read_text())
    assert data["config"]["backend"]["batch_size"] == 3


def test_rerun_on_an_existing_campaign_dir_resumes_it(tmp_path: Path) -> None:
    assert _multirun(tmp_path, "hydra.sweeper.dry_run=true").returncode == 0
    proc = _multirun(tmp_path, "hydra.sweeper.dry_run=true")
    assert proc.returncode == 0 and "resuming campaign" in proc.stderr


def test_group_by_and_campaign_file_mistakes_stop_before_anything_runs(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, "backend.batch_size=1,2", "campaign.group_by=[backend.batch_sise]")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "campaign.group_by: no column backend.batch_sise; did you mean 'backend.batch_size'?" in proc.stderr
    assert not (tmp_path / "sweep" / ".state").exists()
    proc = _multirun(tmp_path, "campaign.file=missing.yaml")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"campaign.file: cannot read {tmp_path / 'missing.yaml'}" in proc.stderr
    proc = _multirun(tmp_path, "campaign.schedule.days=[mon,wendesday]")
    assert proc.returncode != 0 and "schedule.days: unknown day 'wendesday'" in proc.stderr
    assert "did you mean 'wednesday'" in proc.stderr


def test_campaign_wide_keys_on_the_command_line(tmp_path: Path) -> None:
    proc = _multirun(tmp_path, "backend.batch_size=1,2", "campaign.model=qwen2.5-0.5b", "campaign.dataset=synthetic",
                     "campaign.num_samples=4", "campaign.group_by=[backend.batch_size]", "campaign.campaign_name=cli",
                     "campaign.execution.cycles=1", "hydra.sweeper.dry_run=true")
    assert proc.returncode == 0, proc.stderr
    m = _manifest(tmp_path)
    assert [j.overrides for j in m.jobs] == [
        ["model=qwen2.5-0.5b", "dataset=synthetic", "num_input_prompts=4", "backend.batch_size=1"],
        ["model=qwen2.5-0.5b", "dataset=synthetic", "num_input_prompts=4", "backend.batch_size=2"],
    ]
    assert m.group_by == ["backend.batch_size"] and m.swept_keys == ["backend.batch_size"]


@pytest.mark.slow
def test_an_engine_this_machine_lacks_fails_once_with_its_reason(tmp_path: Path) -> None:
    """Tried as a new user would: a two-backend sweep where one engine is not installed."""
    proc = _multirun(tmp_path, *FAST, "backend=pytorch,tensorrt", "fp_precision=float16", "baseline.enabled=false",
                     "campaign.execution.cycles=2", "campaign.execution.warmup_prompts=0")  # fmt: skip
    assert proc.returncode == 1
    assert "HYDRA_FULL_ERROR" not in proc.stderr and "Traceback" not in proc.stderr
    assert "retrying" not in proc.stderr  # nothing a retry could change
    # found before anything launched, every affected job at once, with how to fix it
    assert "llem: preflight: 2 job(s) cannot run on this machine and are not launched:" in proc.stderr
    assert "tensorrt_llm is not installed" in proc.stderr and "pip install 'llem[tensorrt]'" in proc.stderr
    assert "— job(s) 1, 3" in proc.stderr
    assert proc.stderr.index("preflight") < proc.stderr.index("job 0 started")
    assert "kind=health_check" not in proc.stderr  # internal records stay in the manifest and the debug log
    m = _manifest(tmp_path)
    trt = [j for j in m.jobs if j.backend == "tensorrt"]
    assert [(j.status, j.attempts, j.retryable) for j in trt] == [("failed", 0, False)] * 2
    assert all((j.error or "").startswith("preflight: tensorrt_llm is not installed") for j in trt)
    assert [j.status for j in m.jobs if j.backend == "pytorch"] == ["completed"] * 2
    assert "2 job(s) failed:" in proc.stderr
    # a resume checks again (the engine might have been installed meanwhile) and still refuses, once
    again = _multirun(tmp_path, *FAST, "backend=pytorch,tensorrt", "fp_precision=float16", "baseline.enabled=false",
                      "campaign.execution.cycles=2", "campaign.execution.warmup_prompts=0")  # fmt: skip
    assert again.returncode == 1 and "llem: preflight: 2 job(s)" in again.stderr and " started (" not in again.stderr


@pytest.mark.slow
def test_interpolated_overrides_resume_without_running_again(tmp_path: Path) -> None:
    args = (*FAST, "experiment_name=${backend.name}-run", "backend.batch_size=1,2", "baseline.enabled=false",
            "campaign.execution.cycles=1", "campaign.execution.warmup_prompts=0")  # fmt: skip
    first = _multirun(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    planned = {j.job_num: j.config_hash for j in _manifest(tmp_path).jobs}
    ran = {j.job_num: read_result(Path(j.result_path or "")).config_hash for j in _manifest(tmp_path).jobs}
    assert planned == ran  # the plan is what ran
    assert read_result(Path(_manifest(tmp_path).jobs[0].result_path or "")).experiment_name == "pytorch-run"
    again = _multirun(tmp_path, *args)
    assert again.returncode == 0 and "2 job(s) already completed" in again.stderr
    assert "started (" not in again.stderr
