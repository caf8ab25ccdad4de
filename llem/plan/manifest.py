"""The campaign manifest's schema: what every job of a campaign is and how it went.

The plan builds one (llem.plan.planner.build_manifest); the campaign state (llem.campaign.state)
is its one owner and writer, and exports it as `campaign_manifest.json` for people and tools,
which read it back with `read_manifest`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_SCHEMA_VERSION = "1.1"  # 1.1: jobs[].server (scenario=serving)

JobStatus = Literal["pending", "running", "completed", "failed", "interrupted", "invalid", "skipped"]
FINISHED: frozenset[str] = frozenset({"completed", "invalid", "skipped"})


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ManifestJob(_Model):
    """One job: a configuration in one cycle (and daemon repetition)."""

    job_num: int = Field(description="Hydra job number; also the default job dir name.")
    overrides: list[str] = Field(description="Ordinary Hydra overrides: `python -m llem <these>` re-runs it alone.")
    backend: str
    cycle: int = Field(description="Cycle index, from 0.")
    repetition: int = Field(0, description="Daemon repetition index, from 0.")
    config_hash: str | None = Field(description="Hash of the resolved experiment config (null when invalid).")
    params: dict[str, Any] = Field(default_factory=dict, description="The swept values of this job, by key.")
    config_file: str | None = Field(
        None, description="Standalone experiment YAML of this job's resolved config (written when the job launches)."
    )
    status: JobStatus = "pending"
    result_path: str | None = None
    error: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    attempts: int = 0
    retryable: bool = Field(
        True,
        description="False when the last failure cannot change by running again in this environment (engine not "
        "installed, hardware unsupported, settings this machine cannot run): not retried within the run.",
    )
    retired: bool = Field(False, description="No longer part of the campaign (kept with its result).")
    slurm_job_id: str | None = Field(None, description="SLURM job that ran this job (llem_slurm launcher).")
    node: str | None = Field(None, description="Host that ran this job, where the launcher knows it.")
    gpus: list[str] | None = Field(None, description="UUIDs of the GPUs a parallel launcher pinned this job to.")
    server: dict[str, Any] | None = Field(
        None,
        description="scenario=serving: the engine server the job ran against: its `id`, `reused` (false: this job "
        "started it), `started_by_llem`, `started_at`, `ready_s`, `url`. Each start is one job with reused=false.",
    )


class Duplicate(_Model):
    """A planned configuration that resolved to the same config as an earlier one (or to the same effective engine
    settings: `equivalent`) and was dropped; the earlier one's jobs stand for it."""

    overrides: list[str]
    same_as: list[str]
    config_hash: str
    kind: Literal["identical", "equivalent"] = "identical"
    differs_in: list[str] = Field(default_factory=list, description="Keys that differ but cannot take effect.")
    same_as_jobs: list[int] = Field(default_factory=list, description="Job numbers of the configuration that ran.")


class CampaignManifest(_Model):
    schema_version: str = MANIFEST_SCHEMA_VERSION
    campaign_name: str
    campaign_id: str | None = Field(None, description="First 8 hex digits of the MD5 of the campaign name.")
    config_hash: str = Field(description="Hash of the planned job set (configs, cycles, order).")
    created_at: str
    updated_at: str
    sweep_dir: str
    cycles: int
    structure: str
    shuffle_seed: int | None = None
    swept_keys: list[str] = Field(default_factory=list, description="Keys that vary between jobs.")
    group_by: list[str] = Field(
        default_factory=list, description="Keys statistics are grouped by (empty: the swept keys)."
    )
    report: dict[str, float | None] = Field(
        default_factory=dict,
        description="The campaign's report factors (carbon_intensity, pue, price_per_kwh; null: not given).",
    )
    duplicates: list[Duplicate] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list, description="Health checks, restarts, interruptions.")
    schedule: dict[str, Any] = Field(default_factory=dict, description="Daemon schedule state.")
    jobs: list[ManifestJob] = Field(default_factory=list)

    def job(self, job_num: int) -> ManifestJob:
        for job in self.jobs:
            if job.job_num == job_num:
                return job
        raise KeyError(f"job {job_num} is not in the manifest")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.jobs:
            out[job.status] = out.get(job.status, 0) + 1
        return out


def read_manifest(path: Path) -> CampaignManifest:
    return CampaignManifest.model_validate_json(Path(path).read_text())
