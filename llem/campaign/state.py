"""Campaign state: one SQLite database in WAL mode, owned by the orchestrator.

A job update writes one row, so it costs the same at 10 jobs as at 10,000. The readable
`campaign_manifest.json` is an export of this state for people and tools: refreshed at most
every `export_interval_s` and when the campaign stops; resume reads the database.

A campaign dir written before the database existed has only the JSON manifest: it is
imported on first open.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llem.atomic import atomic_write_text, crash_point
from llem.plan.manifest import CampaignManifest, ManifestJob, read_manifest, utc_now

DB_NAME = "campaign.db"
EXPORT_INTERVAL_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (job_num INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL);
"""


class CampaignState:
    """The campaign's jobs, events and settings, held in memory and written through to SQLite.

    Only the orchestrator that holds the campaign lock opens it. Every change is committed
    before the call returns (WAL, synchronous=FULL), so a killed orchestrator loses nothing
    it recorded.
    """

    def __init__(self, manifest_path: Path, *, export_interval_s: float = EXPORT_INTERVAL_S) -> None:
        self.manifest_path = Path(manifest_path)
        self.db_path = self.manifest_path.parent / DB_NAME
        self.export_interval_s = export_interval_s
        self._db: sqlite3.Connection | None = None
        self._manifest: CampaignManifest | None = None
        self._jobs: dict[int, ManifestJob] = {}
        self._exported_at = 0.0
        self._dirty = False

    # ------------------------------------------------------------------ open / create
    def exists(self) -> bool:
        """Whether this campaign dir already holds state (the database or an older JSON manifest)."""
        return self.db_path.exists() or self.manifest_path.exists()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def load(self) -> CampaignManifest:
        """The whole state (read once, when a campaign resumes)."""
        manifest = _read_all(self._connect())
        if manifest is None:
            if not self.manifest_path.exists():
                raise FileNotFoundError(f"no campaign state in {self.manifest_path.parent}")
            self.replace(read_manifest(self.manifest_path))  # an older campaign dir: import its manifest
            assert self._manifest is not None
            return self._manifest
        self._manifest = manifest
        self._jobs = {j.job_num: j for j in manifest.jobs}
        return manifest

    def replace(self, manifest: CampaignManifest) -> None:
        """Store a whole manifest (a new campaign, or one reconciled with a new plan), and export it."""
        db = self._connect()
        manifest.updated_at = utc_now()
        with _transaction(db, self.db_path):
            db.execute("DELETE FROM jobs")
            db.execute("DELETE FROM events")
            db.execute("INSERT OR REPLACE INTO meta (id, data) VALUES (0, ?)", (self._meta_json(manifest),))
            db.executemany(
                "INSERT INTO jobs (job_num, data) VALUES (?, ?)",
                ((j.job_num, j.model_dump_json()) for j in manifest.jobs),
            )
            db.executemany("INSERT INTO events (data) VALUES (?)", ((json.dumps(e, default=str),) for e in manifest.events))
        self._manifest = manifest
        self._jobs = {j.job_num: j for j in manifest.jobs}
        self.export(force=True)

    @staticmethod
    def _meta_json(manifest: CampaignManifest) -> str:
        return manifest.model_dump_json(exclude={"jobs", "events"})

    # ------------------------------------------------------------------ reads
    @property
    def manifest(self) -> CampaignManifest:
        if self._manifest is None:
            return self.load()
        return self._manifest

    def job(self, job_num: int) -> ManifestJob:
        _ = self.manifest  # loads the state on first use
        try:
            return self._jobs[job_num]
        except KeyError:
            raise KeyError(f"job {job_num} is not in the campaign") from None

    def has_job(self, job_num: int) -> bool:
        _ = self.manifest  # loads the state on first use
        return job_num in self._jobs

    # ------------------------------------------------------------------ writes (constant cost)
    def update(self, changes: dict[int, dict[str, Any]]) -> None:
        """Set fields of jobs, by job number: one row each."""
        if not changes:
            return
        db = self._connect()
        rows = []
        for job_num, fields in changes.items():
            job = self.job(job_num)
            for key, value in fields.items():
                setattr(job, key, value)
            rows.append((job.model_dump_json(), job_num))
        with _transaction(db, self.db_path):
            db.executemany("UPDATE jobs SET data = ? WHERE job_num = ?", rows)
        self._changed()

    def add_jobs(self, jobs: Iterable[ManifestJob]) -> None:
        db = self._connect()
        new = list(jobs)
        with _transaction(db, self.db_path):
            db.executemany("INSERT INTO jobs (job_num, data) VALUES (?, ?)", ((j.job_num, j.model_dump_json()) for j in new))
        for job in new:
            self.manifest.jobs.append(job)
            self._jobs[job.job_num] = job
        self._changed()

    def event(self, event: dict[str, Any]) -> None:
        """Append an event (health check, restart, interruption)."""
        record = {"at": utc_now(), **event}
        db = self._connect()
        with _transaction(db, self.db_path):
            db.execute("INSERT INTO events (data) VALUES (?)", (json.dumps(record, default=str),))
        self.manifest.events.append(record)
        self._changed()

    def set_fields(self, **fields: Any) -> None:
        """Set campaign-level fields (schedule state, group_by, ...)."""
        manifest = self.manifest
        for key, value in fields.items():
            setattr(manifest, key, value)
        db = self._connect()
        with _transaction(db, self.db_path):
            db.execute("UPDATE meta SET data = ? WHERE id = 0", (self._meta_json(manifest),))
        self._changed()

    def _changed(self) -> None:
        self._dirty = True
        if time.monotonic() - self._exported_at >= self.export_interval_s:
            self.export()

    # ------------------------------------------------------------------ export
    def export(self, *, force: bool = False) -> Path:
        """Write the readable manifest (atomically) if anything changed since the last export."""
        if self._manifest is not None and (self._dirty or force or not self.manifest_path.exists()):
            self._manifest.updated_at = utc_now()
            atomic_write_text(self.manifest_path, self._manifest.model_dump_json(indent=2) + "\n")
            self._dirty = False
        self._exported_at = time.monotonic()
        return self.manifest_path

    def close(self) -> None:
        """Export what is left and close the database."""
        if self._manifest is not None and self._dirty:
            self.export()
        if self._db is not None:
            self._db.close()
            self._db = None


class _transaction:
    """BEGIN ... COMMIT on an autocommit connection (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            crash_point(self.path)  # crash tests: killed with the transaction written but not committed
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _read_meta(db: sqlite3.Connection) -> dict[str, Any] | None:
    """The campaign-level fields, or None when the database holds no campaign (yet)."""
    try:
        row = db.execute("SELECT data FROM meta WHERE id = 0").fetchone()
    except sqlite3.OperationalError:  # created a moment ago by its orchestrator, tables not yet there
        return None
    return None if row is None else json.loads(row[0])


def _read_all(db: sqlite3.Connection) -> CampaignManifest | None:
    """The whole campaign: its fields, jobs and events (call inside one read transaction for a snapshot)."""
    meta = _read_meta(db)
    if meta is None:
        return None
    jobs = [ManifestJob.model_validate_json(d) for (d,) in db.execute("SELECT data FROM jobs ORDER BY job_num")]
    events = [json.loads(d) for (d,) in db.execute("SELECT data FROM events ORDER BY id")]
    manifest = CampaignManifest.model_validate({**meta, "jobs": [], "events": []})
    manifest.jobs, manifest.events = jobs, events
    return manifest


def _read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30, isolation_level=None)


def read_state(manifest_path: Path) -> CampaignManifest | None:
    """The campaign's current state, read-only, while an orchestrator may be writing it (for tools and tests).

    The JSON manifest can lag by a few seconds; this reads the database. None if there is no state.
    """
    db_path = Path(manifest_path).parent / DB_NAME
    if not db_path.exists():
        return read_manifest(manifest_path) if Path(manifest_path).exists() else None
    db = _read_only(db_path)
    try:
        db.execute("BEGIN")  # one snapshot for the three reads
        manifest = _read_all(db)
        db.execute("COMMIT")
    finally:
        db.close()
    return manifest


def recorded_shuffle_seed(manifest_path: Path) -> int | None:
    """The shuffle seed a campaign dir recorded, read without taking the campaign over (None if none)."""
    db_path = Path(manifest_path).parent / DB_NAME
    if db_path.exists():
        db = _read_only(db_path)
        try:
            meta = _read_meta(db)
        finally:
            db.close()
        return None if meta is None else meta.get("shuffle_seed")
    if Path(manifest_path).exists():
        return read_manifest(manifest_path).shuffle_seed
    return None
