"""Every `python -m llem` command README.md and docs/ show runs as a dry run, planning the jobs the text says.

Each is planned in this process (`run_campaign` with `hydra.sweeper.dry_run=true`): the same plan, validation
and manifest as the command line, without starting a process per example. A single run (`python -m llem
...`) is planned as a one-configuration multirun, which validates its overrides the same way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llem.campaign import CampaignError, run_campaign
from llem.plan.manifest import read_manifest
from tests.docs.doc_examples import Example, examples

# What a dry run here cannot stand for, by the argument that shows it.
NOT_RUNNABLE: dict[str, str] = {
    "...": "an elided command",
    "<": "a placeholder to fill in",
    "--cfg": "prints the composed config; nothing to plan",
    "--config-dir": "reads the reader's own config folder",
    "campaign=nightly": "a campaign file of the reader's own",
    "campaign.file=campaigns/overnight.yaml": "a campaign file of the reader's own",
    "campaign.file=/data/llem/overnight.yaml": "a campaign file of the reader's own",
}

EXAMPLES = examples()


def _skip_reason(example: Example) -> str | None:
    for arg in example.args:
        for marker, reason in NOT_RUNNABLE.items():
            if marker in arg:
                return reason
    return None


def _dry_run_args(example: Example) -> list[str]:
    args = [a for a in example.args if a not in ("-m", "--multirun") and not a.startswith("hydra.sweep.dir=")]
    return [*args, "hydra.sweeper.dry_run=true"]


def test_the_docs_show_commands_and_state_job_counts() -> None:
    runnable = [e for e in EXAMPLES if _skip_reason(e) is None]
    assert len(runnable) >= 12, [e.where for e in runnable]
    assert len([e for e in runnable if e.jobs is not None]) >= 4
    assert {e.where.split(":")[0] for e in runnable} >= {"README.md", "docs/campaigns.md", "docs/guide.md"}


@pytest.mark.slow  # runs `python -m llem` in a subprocess
@pytest.mark.parametrize("example", [e for e in EXAMPLES if _skip_reason(e) is None], ids=lambda e: e.where)
def test_documented_command_plans_as_a_dry_run(example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths a command writes stay in the test's dir
    monkeypatch.setenv("LLEM_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    sweep = tmp_path / "sweep"
    if any(a.startswith("hydra.sweeper.params") for a in example.args):
        # the sweeper reads its params from Hydra's config on the command line; run_campaign takes overrides only
        proc = subprocess.run(
            [sys.executable, "-m", "llem", "-m", *_dry_run_args(example), f"hydra.sweep.dir={sweep}"],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, f"{example.where}: {proc.stderr[-2000:]}"
        manifest_path = sweep / ".state" / "campaign_manifest.json"
    else:
        try:
            outcome = run_campaign(_dry_run_args(example), sweep_dir=sweep)
        except CampaignError as error:
            pytest.fail(f"{example.where}: python -m llem {' '.join(example.args)}\n{error}")
        assert outcome.dry_run
        manifest_path = outcome.manifest_path
    jobs = read_manifest(manifest_path).jobs
    assert jobs and not any(sweep.glob("*/result.json"))
    if example.jobs is not None:
        assert len(jobs) == example.jobs, f"{example.where}: the docs say {example.jobs} jobs, the plan has {len(jobs)}"
