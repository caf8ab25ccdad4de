"""A real, small, partly finished campaign on CPU, built once per test session.

Two configurations (batch size 2 and 4) x 3 cycles of the built-in tiny model, each job
in `<sweep_dir>/<job_num>/result.json`, plus a manifest that also lists a failed job and
a pending one — what a campaign looks like mid-way or after a crash.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from llem.atomic import atomic_write_text
from llem.plan.manifest import CampaignManifest, ManifestJob, utc_now

BATCH_SIZES = (2, 4)
CYCLES = 3


def _experiment(batch_size: int) -> Any:
    from llem.config import ExperimentConfig

    return ExperimentConfig.model_validate(
        {
            "model": {"name": "builtin:tiny"},
            "num_input_prompts": 4,
            "max_input_tokens": 32,
            "max_output_tokens": 6,
            "warmup": {"num_prompts": 1},
            "baseline": {"enabled": False},
            "backend": {"name": "pytorch", "batch_size": batch_size},
        }
    )


def _job(job_num: int, batch_size: int, cycle: int, **fields: Any) -> ManifestJob:
    return ManifestJob(
        job_num=job_num,
        overrides=[f"backend.batch_size={batch_size}"],
        backend="pytorch",
        cycle=cycle,
        params={"backend": "pytorch", "backend.batch_size": batch_size},
        **fields,
    )


@pytest.fixture(scope="session")
def campaign_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llem.measure.harness import run_experiment
    from llem.measure.session import BackendSession

    sweep_dir = tmp_path_factory.mktemp("campaign") / "tiny-batch"
    session = BackendSession()
    jobs: list[ManifestJob] = []
    try:
        for cycle in range(CYCLES):
            for batch_size in BATCH_SIZES:
                job_num = len(jobs)
                out = sweep_dir / str(job_num)
                result = run_experiment(_experiment(batch_size), out, session)
                jobs.append(
                    _job(
                        job_num,
                        batch_size,
                        cycle,
                        config_hash=result.config_hash,
                        status="completed",
                        result_path=str(out / "result.json"),
                        started_at=result.started_at,
                        completed_at=result.completed_at,
                        attempts=1,
                    )
                )
    finally:
        session.release()
    (sweep_dir / "6").mkdir()  # a failed job leaves a dir without result.json
    jobs.append(_job(6, 8, 0, config_hash="0123456789abcdef", status="failed", error="boom", attempts=1))
    jobs.append(_job(7, 8, 1, config_hash="0123456789abcdef"))
    now = utc_now()
    manifest = CampaignManifest(
        campaign_name="tiny-batch",
        config_hash="feedfacefeedface",
        created_at=now,
        updated_at=now,
        sweep_dir=str(sweep_dir),
        cycles=CYCLES,
        structure="interleaved",
        swept_keys=["backend.batch_size"],
        jobs=jobs,
    )
    atomic_write_text(sweep_dir / ".state" / "campaign_manifest.json", manifest.model_dump_json(indent=2) + "\n")
    return sweep_dir


@pytest.fixture
def campaign_copy(campaign_dir: Path, tmp_path: Path) -> Path:
    """A private copy (to corrupt or move); the manifest keeps the original absolute paths."""
    copy = tmp_path / "copied-campaign"
    shutil.copytree(campaign_dir, copy, ignore=shutil.ignore_patterns("summary.*", "report.*", "plots"))
    return copy


@pytest.fixture(scope="session")
def report_dir(campaign_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m llem.report` (in-process) on the real campaign, into its own dir."""
    from llem.report.__main__ import main

    out = tmp_path_factory.mktemp("report")
    assert main([str(campaign_dir), "--out", str(out), "--seed", "5"]) == 0
    return out


# The campaign above measures six real experiments: every test that reads it is a slow test.
_REAL_CAMPAIGN = frozenset({"campaign_dir", "campaign_copy", "report_dir"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _REAL_CAMPAIGN & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
