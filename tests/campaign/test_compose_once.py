"""In a campaign each configuration is composed once and validated once: the launcher assembles each job from the
plan's composition and hands the worker the plan's validated settings (a real campaign on local warm workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl

from llem.campaign import run_campaign
from llem.campaign.state import read_state
from llem.config import ExperimentConfig
from llem.launch.job_config import JobComposer
from llem.plan import compose
from tests.campaign import helpers as h

pytestmark = [pytest.mark.slow]  # real campaigns on local warm workers

# Runs the worker with every ExperimentConfig validation written down (any other command runs as given).
COUNTING_WORKER = """
import os, runpy, sys
if sys.argv[1:3] != ["-m", "llem.launch.worker"]:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
from llem.config import ExperimentConfig
original = ExperimentConfig.model_validate.__func__

def counting(cls, *args, **kwargs):
    if cls is ExperimentConfig:
        with open(os.environ["LLEM_TEST_VALIDATIONS"], "a") as log:
            log.write("validated\\n")
    return original(cls, *args, **kwargs)

ExperimentConfig.model_validate = classmethod(counting)
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_module("llem.launch.worker", run_name="__main__", alter_sys=True)
"""


def _counting_python(tmp_path: Path) -> tuple[Path, Path]:
    """An interpreter for `hydra.launcher.python` whose workers log each validation, and that log."""
    script = tmp_path / "counting_worker.py"
    script.write_text(COUNTING_WORKER)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    return python, tmp_path / "worker-validations.log"


def _count(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, counts: dict[str, int], label: str,
           *, when: Any = None) -> None:
    original = getattr(owner, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        if when is None or when(*args, **kwargs):
            counts[label] = counts.get(label, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)


def test_each_configuration_is_composed_and_validated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python, log = _counting_python(tmp_path)
    monkeypatch.setenv("LLEM_TEST_VALIDATIONS", str(log))

    counts: dict[str, int] = {}
    _count(monkeypatch, ConfigLoaderImpl, "load_configuration", counts, "hydra compositions",
           when=lambda *a, **k: str(k.get("run_mode", "")) == "RunMode.RUN")  # the master config is MULTIRUN
    _count(monkeypatch, ConfigLoaderImpl, "load_sweep_config", counts, "hydra compositions")
    _count(monkeypatch, compose.FastComposer, "compose", counts, "job compositions")
    _count(monkeypatch, JobComposer, "compose", counts, "job compositions")
    _count(monkeypatch, ExperimentConfig, "model_validate", counts, "host validations")

    outcome = run_campaign(
        [*h.FAST, "backend.batch_size=1,2", "campaign.execution.cycles=2", "campaign.execution.config_gap_seconds=0",
         f"hydra.launcher.python={python}"],
        sweep_dir=tmp_path / "sweep",
    )

    assert outcome.ok and outcome.counts == {"completed": 4}, outcome.counts
    manifest = read_state(outcome.manifest_path)
    assert manifest is not None
    configurations = {tuple(j.overrides) for j in manifest.jobs}
    assert len(configurations) == 2 and len(manifest.jobs) == 4  # two configurations, two cycles each
    worker_validations = len(log.read_text().splitlines()) if log.exists() else 0
    assert {**counts, "worker validations": worker_validations} == {
        "hydra compositions": 1,  # one config-group selection, composed by Hydra once (hydra node included)
        "job compositions": 2,  # each configuration's overrides applied once, by the plan
        "host validations": 2,  # each configuration validated once, by the plan
        "worker validations": 0,  # the worker runs the plan's validated settings
    }


def test_jobs_no_campaign_planned_validate_in_the_worker(tmp_path: Path) -> None:
    """Hydra's basic sweeper on a llem launcher: nobody planned the jobs, so each validates itself where it runs."""
    python, log = _counting_python(tmp_path)
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [*h.command(sweep, "hydra/sweeper=basic", "backend.batch_size=1,2", "campaign.execution.config_gap_seconds=0",
                    f"hydra.launcher.python={python}")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "LLEM_TEST_VALIDATIONS": str(log)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if (p / "result.json").is_file()) == ["0", "1"]
    assert len(log.read_text().splitlines()) == 2  # one validation per job, in the worker
