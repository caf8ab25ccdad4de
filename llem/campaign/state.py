"""Campaign state: one SQLite database (WAL mode; the rollback journal on network file systems), owned by the
orchestrator.

A job update writes one row, so it costs the same at 10 jobs as at 10,000. The readable
`campaign_manifest.json` is an export of this state for people and tools: refreshed at most
every `export_interval_s` and when the campaign stops; resume reads the database.

A campaign dir written before the database existed has only the JSON manifest: it is
imported on first open.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llem.atomic import atomic_write_text, crash_point
from llem.campaign.journal import journal_mode
from llem.launch.interrupts import interrupts_deferred
from llem.plan.manifest import CampaignManifest, ManifestJob, read_manifest, utc_now

DB_NAME = "campaign.db"
EXPORT_INTERVAL_S = 5.0

log = logging.getLogger(__name__)

# Created in the same transaction as the campaign's meta row: a database without meta holds no campaign.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS jobs (job_num INTEGER PRIMARY KEY, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL)",
)


class StateClosed(RuntimeError):
    """A write reached the campaign state after it was closed (and the campaign lock released)."""


class CampaignState:
    """The campaign's jobs, events and settings, held in memory and written through to SQLite.

    Only the orchestrator that holds the campaign lock opens it. Every change is committed
    before the call returns (WAL, synchronous=FULL), so a killed orchestrator loses nothing
    it recorded.

    Launcher job threads and the engine write it at the same time: every write holds the state's own
    lock, so one transaction never starts inside another on the shared connection. A write cannot be
    cut by Ctrl-C or SIGTERM: the signal waits until the transaction and the in-memory copy agree, and
    an exception inside a transaction rolls it back, leaving the connection ready for the next write.

    After `close()` every write raises `StateClosed` rather than being dropped or reopening the
    database: the campaign lock is released by then, so a reopened database could race a new
    orchestrator, and a dropped write would vanish silently. The raise ends only the late caller (a
    job thread the launcher failed to stop); its result.json, if any, is recovered on resume.
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
        self._lock = threading.RLock()
        self._closed = False

    # ------------------------------------------------------------------ open / create
    def exists(self) -> bool:
        """Whether this campaign dir already holds a campaign: a database with its meta row, or an older JSON
        manifest. A database whose first transaction never committed (a crash while it was created) is fresh."""
        if self.manifest_path.exists():
            return True
        if not self.db_path.exists():
            return False
        with self._lock:
            return _read_meta(self._connect()) is not None

    @property
    def loaded(self) -> bool:
        """Whether the campaign is in memory (created or loaded), so reading it touches no file."""
        return self._manifest is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StateClosed(f"the campaign state in {self.db_path.parent} is closed")
        if self._db is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            # WAL where the file system shares its memory map; the rollback journal on network file systems
            db.execute(f"PRAGMA journal_mode={journal_mode(self.db_path.parent)}")
            db.execute("PRAGMA synchronous=FULL")
            self._db = db
        return self._db

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """One write: under the state's lock, with interrupts held until it is whole, refused once closed."""
        with self._lock, interrupts_deferred():
            if self._closed:
                raise StateClosed(f"{what} after the campaign state in {self.db_path.parent} was closed; not recorded")
            yield

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on the autocommit connection; ROLLBACK on any exception, Ctrl-C included.

        Call within `_writing` (the lock)."""
        db = self._connect()
        if db.in_transaction:  # never expected: a transaction some earlier failure left open cannot be ours to keep
            db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            crash_point(self.db_path)  # crash tests: killed with the transaction written but not committed
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def load(self) -> CampaignManifest:
        """The whole state (read once, when a campaign resumes)."""
        with self._lock:
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
        """Store a whole manifest (a new campaign, or one reconciled with a new plan), and export it.

        The tables are created in the same transaction as the meta row, so a crash here leaves either a whole
        campaign or a database that `exists()` treats as fresh."""
        with self._writing("replacing the campaign"):
            manifest.updated_at = utc_now()
            with self._transaction() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("DELETE FROM jobs")
                db.execute("DELETE FROM events")
                db.execute("INSERT OR REPLACE INTO meta (id, data) VALUES (0, ?)", (self._meta_json(manifest),))
                db.executemany(
                    "INSERT INTO jobs (job_num, data) VALUES (?, ?)",
                    ((j.job_num, j.model_dump_json()) for j in manifest.jobs),
                )
                db.executemany(
                    "INSERT INTO events (data) VALUES (?)", ((json.dumps(e, default=str),) for e in manifest.events)
                )
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
        """Set fields of jobs, by job number: one row each. Memory changes only once the rows are committed."""
        if not changes:
            return
        with self._writing(f"an update of job(s) {sorted(changes)}"):
            jobs = {job_num: self.job(job_num) for job_num in changes}
            rows = [
                (jobs[job_num].model_copy(update=fields).model_dump_json(), job_num)
                for job_num, fields in changes.items()
            ]
            with self._transaction() as db:
                db.executemany("UPDATE jobs SET data = ? WHERE job_num = ?", rows)
            for job_num, fields in changes.items():
                for key, value in fields.items():
                    setattr(jobs[job_num], key, value)
            self._changed()

    def add_jobs(self, jobs: Iterable[ManifestJob]) -> None:
        new = list(jobs)
        with self._writing(f"adding {len(new)} job(s)"):
            with self._transaction() as db:
                db.executemany(
                    "INSERT INTO jobs (job_num, data) VALUES (?, ?)", ((j.job_num, j.model_dump_json()) for j in new)
                )
            for job in new:
                self.manifest.jobs.append(job)
                self._jobs[job.job_num] = job
            self._changed()

    def event(self, event: dict[str, Any]) -> None:
        """Append an event (health check, restart, interruption)."""
        record = {"at": utc_now(), **event}
        with self._writing(f"the event {event.get('kind')!r}"):
            with self._transaction() as db:
                db.execute("INSERT INTO events (data) VALUES (?)", (json.dumps(record, default=str),))
            self.manifest.events.append(record)
            self._changed()

    def set_fields(self, **fields: Any) -> None:
        """Set campaign-level fields (schedule state, group_by, ...)."""
        with self._writing(f"setting {', '.join(fields)}"):
            manifest = self.manifest
            meta = self._meta_json(manifest.model_copy(update=fields))
            with self._transaction() as db:
                db.execute("UPDATE meta SET data = ? WHERE id = 0", (meta,))
            for key, value in fields.items():
                setattr(manifest, key, value)
            self._changed()

    def _changed(self) -> None:
        self._dirty = True
        if time.monotonic() - self._exported_at >= self.export_interval_s:
            self.export()

    # ------------------------------------------------------------------ export
    def export(self, *, force: bool = False) -> Path:
        """Write the readable manifest (atomically) if anything changed since the last export."""
        with self._writing("an export of the manifest"):
            if self._manifest is not None and (self._dirty or force or not self.manifest_path.exists()):
                self._manifest.updated_at = utc_now()
                atomic_write_text(self.manifest_path, self._manifest.model_dump_json(indent=2) + "\n")
                self._dirty = False
            self._exported_at = time.monotonic()
        return self.manifest_path

    def close(self) -> None:
        """Export what is left and close the database; every later write raises `StateClosed`."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._manifest is not None and self._dirty:
                    self.export()
            finally:
                self._closed = True
                if self._db is not None:
                    self._db.close()
                    self._db = None


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
    """A read-only connection; the path is percent-encoded, so a `#` or `?` in it names no other file."""
    uri = Path(db_path).absolute().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)


def read_state(manifest_path: Path) -> CampaignManifest | None:
    """The campaign's current state, read-only, while an orchestrator may be writing it (for tools and tests).

    The JSON manifest can lag by a few seconds; this reads the database. None if there is no state.
    """
    db_path = Path(manifest_path).parent / DB_NAME
    manifest = None
    if db_path.exists():
        db = _read_only(db_path)
        try:
            db.execute("BEGIN")  # one snapshot for the three reads
            manifest = _read_all(db)
            db.execute("COMMIT")
        finally:
            db.close()
    if manifest is None and Path(manifest_path).exists():  # no database, or one whose campaign never committed
        return read_manifest(manifest_path)
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
        if meta is not None:
            return meta.get("shuffle_seed")
    if Path(manifest_path).exists():
        return read_manifest(manifest_path).shuffle_seed
    return None
