"""The campaign manifest: one JSON file that says what every job is and how it went.

It is the campaign's source of truth for resume and reports, so every write is atomic
and concurrent updates (sweeper, launcher, workers) are serialised with a file lock.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

from llem.atomic import atomic_write_text

MANIFEST_SCHEMA_VERSION = "1.0"

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


class Duplicate(_Model):
    """A planned configuration that resolved to the same config as an earlier one and was dropped."""

    overrides: list[str]
    same_as: list[str]
    config_hash: str


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


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=60)


def write_manifest(path: Path, manifest: CampaignManifest) -> Path:
    """Write atomically, stamping `updated_at`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.updated_at = utc_now()
    with _lock(path):
        return atomic_write_text(path, manifest.model_dump_json(indent=2) + "\n")


def read_manifest(path: Path) -> CampaignManifest:
    return CampaignManifest.model_validate_json(Path(path).read_text())


def update_jobs(path: Path, changes: dict[int, dict[str, Any]], event: dict[str, Any] | None = None) -> CampaignManifest:
    """Apply field changes to jobs (by job number) under the lock; read-modify-write, atomic."""
    path = Path(path)
    with _lock(path):
        manifest = read_manifest(path)
        for job_num, fields in changes.items():
            job = manifest.job(job_num)
            for key, value in fields.items():
                setattr(job, key, value)
        if event is not None:
            manifest.events.append({"at": utc_now(), **event})
        manifest.updated_at = utc_now()
        atomic_write_text(path, manifest.model_dump_json(indent=2) + "\n")
    return manifest


def record_event(path: Path, event: dict[str, Any]) -> None:
    """Append an event (health check, restart, interruption) to the manifest."""
    update_jobs(path, {}, event)
