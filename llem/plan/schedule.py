"""The daemon schedule: when each repetition of a campaign starts, kept in the manifest.

Repetitions start at `at` (local time) or now, then `interval` after the previous one
ends, and none starts at or after `total_duration` from the first start. The state lives
in the manifest, so a resumed daemon continues the schedule instead of starting over.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from llem.config.campaign import CampaignDaemonConfig


def next_local_time(hhmm: str, now: dt.datetime) -> dt.datetime:
    """The next moment (today or tomorrow) the local clock shows HH:MM."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    local = now.astimezone()
    target = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= local:
        target += dt.timedelta(days=1)
    return target.astimezone(dt.timezone.utc)


def initial_state(daemon: CampaignDaemonConfig, now: dt.datetime) -> dict[str, Any]:
    start = next_local_time(daemon.at, now) if daemon.at else now
    total = daemon.total_duration_seconds
    return {
        "first_start": start.isoformat(),
        "deadline": (start + dt.timedelta(seconds=total)).isoformat() if total else None,
        "repetitions_done": 0,
        "next_start": start.isoformat(),
        "interval_s": daemon.interval_seconds,
    }


def may_start(state: dict[str, Any], now: dt.datetime | None = None) -> bool:
    """Whether the next repetition can begin before the deadline (it begins at its time or now, if later)."""
    if state.get("next_start") is None:
        return False
    deadline = state.get("deadline")
    if deadline is None:
        return True
    begins = max(dt.datetime.fromisoformat(state["next_start"]), now or dt.datetime.now(dt.timezone.utc))
    return begins < dt.datetime.fromisoformat(deadline)


def after_repetition(state: dict[str, Any], ended: dt.datetime) -> dict[str, Any]:
    """State once a repetition has finished at `ended`."""
    out = dict(state)
    out["repetitions_done"] = int(state["repetitions_done"]) + 1
    interval = state.get("interval_s")
    out["next_start"] = (ended + dt.timedelta(seconds=interval)).isoformat() if interval else None
    return out
