"""When a campaign starts and when each daemon repetition starts, kept in the manifest.

Repetitions start at `at` or now, then `interval` after the previous one ends, and none
starts at or after `total_duration` from the first start. `schedule.days` limits starts to
named days: a start that falls on another day moves to the next allowed day (at `at`,
or at midnight without one). Days and times are wall-clock times in `schedule.timezone`
(default: the machine's local time), so a daylight-saving change never shifts a 02:00
start to 01:00 or 03:00; a time the change skips starts an hour later, a time it repeats
starts at its first occurrence. The state lives in the manifest, so a resumed daemon
continues the schedule instead of starting over.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Any

from llem.config.campaign import WEEKDAYS, CampaignDaemonConfig, CampaignScheduleConfig

_UTC = dt.timezone.utc


def _local_instant(wall: dt.datetime) -> dt.datetime:
    """The UTC instant of a naive local wall time: a time a change repeats at its first occurrence, a time it
    skips an hour later (as zoneinfo does for a named zone; the platform's mktime may pick either)."""
    first, second = (wall.replace(fold=f).astimezone(_UTC) for f in (0, 1))
    if first == second:
        return first
    exists = any(m.astimezone().replace(tzinfo=None) == wall for m in (first, second))
    return min(first, second) if exists else max(first, second)


@dataclass(frozen=True)
class Calendar:
    """Which days and at what wall-clock time runs may start, in one time zone (None: local time)."""

    at: str | None = None
    days: frozenset[int] | None = None  # 0 = Monday; None: any day
    zone: str | None = None

    @classmethod
    def of(cls, schedule: CampaignScheduleConfig | None, at: str | None = None) -> "Calendar":
        """The calendar of `schedule`, starting at `at` (e.g. `daemon.at`) or else `schedule.at`."""
        if schedule is None:
            return cls(at=at)
        days = None if schedule.days is None else frozenset(WEEKDAYS.index(d) for d in schedule.days)
        return cls(at=at or schedule.at, days=days, zone=schedule.timezone)

    def _local(self, moment: dt.datetime) -> dt.datetime:
        """`moment` as wall-clock time: aware in the zone, or naive local time."""
        if self.zone is None:
            return moment.astimezone().replace(tzinfo=None)
        return moment.astimezone(zoneinfo.ZoneInfo(self.zone))

    def _instant(self, day: dt.date, hour: int, minute: int) -> dt.datetime:
        """The UTC instant the wall clock shows `day` HH:MM (fold 0: an hour a change skips runs late)."""
        if self.zone is None:
            return _local_instant(dt.datetime(day.year, day.month, day.day, hour, minute))
        wall = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=zoneinfo.ZoneInfo(self.zone))
        return wall.astimezone(_UTC)

    def allows(self, day: dt.date) -> bool:
        return self.days is None or day.weekday() in self.days

    def local_date(self, moment: dt.datetime) -> dt.date:
        """The calendar day the wall clock shows at `moment`."""
        return self._local(moment).date()

    def next_start(self, after: dt.datetime, *, use_at: bool = True) -> dt.datetime:
        """The first allowed start at or after `after` (UTC).

        With `at` (and `use_at`): the next time the wall clock shows `at` on an allowed day,
        strictly after `after`. Without: `after` itself on an allowed day, else midnight of the
        next allowed day.
        """
        local = self._local(after)
        today = local.date()
        if use_at and self.at is not None:
            hour, minute = (int(x) for x in self.at.split(":"))
            for offset in range(0, 8):
                day = today + dt.timedelta(days=offset)
                candidate = self._instant(day, hour, minute)
                if self.allows(day) and candidate > after:
                    return candidate
            raise AssertionError("no allowed day within a week")  # days is never empty
        if self.allows(today):
            return after.astimezone(_UTC)
        for offset in range(1, 8):
            day = today + dt.timedelta(days=offset)
            if self.allows(day):
                return self._instant(day, 0, 0)
        raise AssertionError("no allowed day within a week")

    def describe(self) -> dict[str, Any]:
        return {
            "days": None if self.days is None else [WEEKDAYS[d] for d in sorted(self.days)],
            "timezone": self.zone,
        }


def next_local_time(hhmm: str, now: dt.datetime) -> dt.datetime:
    """The next moment (today or tomorrow) the local clock shows HH:MM."""
    return Calendar(at=hhmm).next_start(now)


def initial_state(
    daemon: CampaignDaemonConfig, now: dt.datetime, calendar: Calendar | None = None
) -> dict[str, Any]:
    calendar = calendar or Calendar(at=daemon.at)
    start = calendar.next_start(now)
    total = daemon.total_duration_seconds
    return {
        "first_start": start.isoformat(),
        "deadline": (start + dt.timedelta(seconds=total)).isoformat() if total else None,
        "repetitions_done": 0,
        "next_start": start.isoformat(),
        "interval_s": daemon.interval_seconds,
        **calendar.describe(),
    }


def may_start(state: dict[str, Any], now: dt.datetime | None = None) -> bool:
    """Whether the next repetition can begin before the deadline (it begins at its time or now, if later)."""
    if state.get("next_start") is None:
        return False
    deadline = state.get("deadline")
    if deadline is None:
        return True
    begins = max(dt.datetime.fromisoformat(state["next_start"]), now or dt.datetime.now(_UTC))
    return begins < dt.datetime.fromisoformat(deadline)


def after_repetition(
    state: dict[str, Any], ended: dt.datetime, calendar: Calendar | None = None
) -> dict[str, Any]:
    """State once a repetition has finished at `ended`: the next start `interval` later, on an allowed day."""
    out = dict(state)
    out["repetitions_done"] = int(state["repetitions_done"]) + 1
    interval = state.get("interval_s")
    if not interval:
        out["next_start"] = None
        return out
    candidate = ended + dt.timedelta(seconds=interval)
    if calendar is not None:
        # on an allowed day the interval decides; on another day, wait for the next allowed day's `at`
        candidate = calendar.next_start(candidate, use_at=not calendar.allows(calendar.local_date(candidate)))
    out["next_start"] = candidate.isoformat()
    if calendar is not None:
        out.update(calendar.describe())
    return out
