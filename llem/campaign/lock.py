"""One orchestrator per campaign dir: an OS file lock plus a note naming who holds it.

The lock is `flock`-based (filelock), so the kernel releases it when its holder dies:
a lock left by a dead process is simply free, and the note it left is reported as stale.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

LOCK_NAME = "campaign.lock"
OWNER_NAME = "campaign.lock.owner.json"


class CampaignLocked(RuntimeError):
    """Another live orchestrator runs this campaign; the message names its PID and host."""


class CampaignLock:
    """Hold the campaign's lock for the lifetime of an orchestrator (`with CampaignLock(state_dir): ...`)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._lock = FileLock(str(self.state_dir / LOCK_NAME), timeout=0)
        self.stale_owner: dict[str, object] | None = None

    @property
    def owner_path(self) -> Path:
        return self.state_dir / OWNER_NAME

    def _owner(self) -> dict[str, object] | None:
        try:
            return json.loads(self.owner_path.read_text())
        except (OSError, ValueError):
            return None

    def __enter__(self) -> "CampaignLock":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            owner = self._owner() or {}
            raise CampaignLocked(
                f"campaign dir is in use by PID {owner.get('pid', '?')} on host {owner.get('host', '?')} "
                f"(since {owner.get('started_at', '?')}); lock: {self.state_dir / LOCK_NAME}"
            ) from None
        self.stale_owner = self._owner()  # a note left by a holder that died without releasing
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.owner_path.write_text(json.dumps(note) + "\n")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.owner_path.unlink(missing_ok=True)
        self._lock.release()
