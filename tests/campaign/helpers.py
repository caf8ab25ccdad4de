"""Running and killing real campaign orchestrators for crash and schedule tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from llem.campaign.state import read_state
from llem.plan.manifest import CampaignManifest

REPO = Path(__file__).resolve().parents[2]
FAST = ["num_input_prompts=2", "max_output_tokens=3", "max_input_tokens=16", "warmup.num_prompts=0",
        "baseline.enabled=false", "campaign.execution.cycle_gap_seconds=0", "campaign.execution.warmup_prompts=0",
        "campaign.execution.cycles=1", "campaign.health_check.enabled=false"]


def command(sweep: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", *FAST, *args]


def start(sweep: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(command(sweep, *args), cwd=sweep.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def manifest(sweep: Path) -> CampaignManifest | None:
    """The campaign's live state (the database; the JSON export may lag by a few seconds)."""
    return read_state(sweep / ".state" / "campaign_manifest.json")


def wait_for(proc: subprocess.Popen[str], sweep: Path, condition: Callable[[CampaignManifest], bool],
             timeout: float = 300) -> CampaignManifest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = manifest(sweep)
        if m is not None and condition(m):
            return m
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"orchestrator exited ({proc.returncode}) before the condition:\n{err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    raise AssertionError("condition not reached in time")


def kill(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    return err


def statuses(m: Any) -> dict[int, str]:
    return {j.job_num: j.status for j in m.jobs}
