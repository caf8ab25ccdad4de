"""Start times on named days, in a time zone, across daylight-saving changes (fixed datetimes, no waiting)."""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from collections.abc import Iterator

import pytest

from llem.config.campaign import CampaignDaemonConfig, CampaignScheduleConfig
from llem.plan import schedule
from llem.plan.schedule import Calendar

UTC = dt.timezone.utc
LONDON = zoneinfo.ZoneInfo("Europe/London")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _calendar(**schedule_keys: object) -> Calendar:
    return Calendar.of(CampaignScheduleConfig.model_validate(schedule_keys))


def test_named_days_and_a_start_time() -> None:
    cal = _calendar(at="02:00", days=["mon", "wed"], timezone="Europe/London")
    # Tuesday 2026-06-02 12:00 UTC: the next start is Wednesday 02:00 BST = 01:00 UTC
    assert cal.next_start(_utc(2026, 6, 2, 12, 0)) == _utc(2026, 6, 3, 1, 0)
    # Wednesday after 02:00: the next allowed day is Monday
    assert cal.next_start(_utc(2026, 6, 3, 1, 0)) == _utc(2026, 6, 8, 1, 0)
    # Monday before 02:00 local: today
    assert cal.next_start(_utc(2026, 6, 7, 23, 30)) == _utc(2026, 6, 8, 1, 0)


def test_weekdays_weekends_and_no_start_time() -> None:
    weekdays = _calendar(at="17:00", days="weekdays", timezone="America/New_York")
    friday_evening = dt.datetime(2026, 6, 5, 18, 0, tzinfo=NEW_YORK)
    assert weekdays.next_start(friday_evening) == dt.datetime(2026, 6, 8, 17, 0, tzinfo=NEW_YORK)
    weekends = _calendar(days="weekends", timezone="Europe/London")
    wednesday = dt.datetime(2026, 6, 3, 10, 0, tzinfo=LONDON)
    assert weekends.next_start(wednesday) == dt.datetime(2026, 6, 6, 0, 0, tzinfo=LONDON)  # Saturday midnight
    saturday = dt.datetime(2026, 6, 6, 10, 0, tzinfo=LONDON)
    assert weekends.next_start(saturday) == saturday  # an allowed day without a time: now
    anyday = _calendar()
    assert anyday.next_start(wednesday) == wednesday


def test_the_zone_decides_which_day_it_is() -> None:
    # 2026-06-07 23:30 UTC is already Monday 00:30 in London, still Sunday evening in New York
    moment = _utc(2026, 6, 7, 23, 30)
    assert moment.astimezone(LONDON).strftime("%a") == "Mon" and moment.astimezone(NEW_YORK).strftime("%a") == "Sun"
    assert _calendar(days=["mon"], timezone="Europe/London").next_start(moment) == moment
    assert _calendar(days=["mon"], timezone="America/New_York").next_start(moment) == dt.datetime(
        2026, 6, 8, 0, 0, tzinfo=NEW_YORK
    )


def _daily(cal: Calendar, after: dt.datetime, count: int) -> list[dt.datetime]:
    """The next `count` starts, each one after the previous."""
    starts = []
    for _ in range(count):
        after = cal.next_start(after)
        starts.append(after)
    return starts


def test_daily_start_keeps_its_wall_clock_time_across_daylight_saving() -> None:
    # Exact UTC instants, worked out by hand; a fixed UTC offset (the zone's offset "now", or UTC itself)
    # gets the starts on one side of each change wrong by an hour.
    london = _calendar(at="02:00", timezone="Europe/London")
    # clocks go forward on Sunday 2026-03-29 at 01:00 UTC: 02:00 GMT = 02:00 UTC, then 02:00 BST = 01:00 UTC
    spring = _daily(london, _utc(2026, 3, 27, 12, 0), 4)
    assert spring == [_utc(2026, 3, 28, 2, 0), _utc(2026, 3, 29, 1, 0), _utc(2026, 3, 30, 1, 0), _utc(2026, 3, 31, 1, 0)]
    # clocks go back on Sunday 2026-10-25 at 01:00 UTC: 02:00 BST = 01:00 UTC, then 02:00 GMT = 02:00 UTC
    autumn = _daily(london, _utc(2026, 10, 23, 12, 0), 3)
    assert autumn == [_utc(2026, 10, 24, 1, 0), _utc(2026, 10, 25, 2, 0), _utc(2026, 10, 26, 2, 0)]
    new_york = _calendar(at="09:00", timezone="America/New_York")
    # forward on Sunday 2026-03-08 (EST, UTC-5 -> EDT, UTC-4); back on Sunday 2026-11-01
    assert _daily(new_york, _utc(2026, 3, 6, 20, 0), 3) == [
        _utc(2026, 3, 7, 14, 0), _utc(2026, 3, 8, 13, 0), _utc(2026, 3, 9, 13, 0)
    ]
    assert _daily(new_york, _utc(2026, 10, 30, 20, 0), 3) == [
        _utc(2026, 10, 31, 13, 0), _utc(2026, 11, 1, 14, 0), _utc(2026, 11, 2, 14, 0)
    ]
    for start in spring + autumn:
        assert start.tzinfo == UTC and start.astimezone(LONDON).strftime("%H:%M") == "02:00"


def test_a_zoned_calendar_ignores_the_machines_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    cal = _calendar(at="02:00", timezone="Europe/London")
    expected = [_utc(2026, 3, 28, 2, 0), _utc(2026, 3, 29, 1, 0)]
    try:
        for machine in ("UTC", "America/New_York", "Asia/Kolkata"):
            monkeypatch.setenv("TZ", machine)
            time.tzset()
            assert _daily(cal, _utc(2026, 3, 27, 12, 0), 2) == expected, machine
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_time_the_change_skips_runs_an_hour_later_and_a_repeated_one_at_its_first_occurrence() -> None:
    skipped = _calendar(at="01:30", days=["sun"], timezone="Europe/London")
    start = skipped.next_start(_utc(2026, 3, 28, 12, 0))
    assert start == _utc(2026, 3, 29, 1, 30) and start.astimezone(LONDON).strftime("%H:%M") == "02:30"
    repeated = _calendar(at="01:30", days=["sun"], timezone="Europe/London")
    assert repeated.next_start(_utc(2026, 10, 24, 12, 0)) == _utc(2026, 10, 25, 0, 30)  # 01:30 BST, not GMT
    spring_ny = _calendar(at="02:30", timezone="America/New_York")
    assert spring_ny.next_start(_utc(2026, 3, 7, 20, 0)) == _utc(2026, 3, 8, 7, 30)  # 03:30 EDT


@pytest.fixture
def london_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's local time is London's for the test (the default when no zone is given)."""
    monkeypatch.setenv("TZ", "Europe/London")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_local_time_by_default_follows_daylight_saving(london_local_time: None) -> None:
    local = _calendar(at="02:00", days="weekends")
    zoned = _calendar(at="02:00", days="weekends", timezone="Europe/London")
    moment = _utc(2026, 3, 26, 12, 0)
    # Sat 28 March 02:00 GMT, Sun 29 02:00 BST (the clocks went forward at 01:00 UTC), Sat 4 April, Sun 5
    expected = [_utc(2026, 3, 28, 2, 0), _utc(2026, 3, 29, 1, 0), _utc(2026, 4, 4, 1, 0), _utc(2026, 4, 5, 1, 0)]
    starts = _daily(local, moment, 4)
    assert starts == expected and _daily(zoned, moment, 4) == expected
    # autumn: Sat 24 October 02:00 BST, Sun 25 02:00 GMT (the clocks went back at 01:00 UTC)
    assert _daily(local, _utc(2026, 10, 22, 12, 0), 2) == [_utc(2026, 10, 24, 1, 0), _utc(2026, 10, 25, 2, 0)]


def test_local_time_by_default_starts_a_repeated_time_at_its_first_occurrence(london_local_time: None) -> None:
    cal = _calendar(at="01:30", days=["sun"])
    first = cal.next_start(_utc(2026, 10, 24, 12, 0))
    assert first == _utc(2026, 10, 25, 0, 30)  # 01:30 BST; 01:30 GMT (01:30 UTC) comes again an hour later
    assert cal.next_start(first) == _utc(2026, 11, 1, 1, 30)  # not a second time that night


def test_local_time_by_default_starts_a_skipped_time_an_hour_later(london_local_time: None) -> None:
    local = _calendar(at="01:30", days=["sun"])
    zoned = _calendar(at="01:30", days=["sun"], timezone="Europe/London")
    after = _utc(2026, 3, 28, 12, 0)
    assert zoned.next_start(after) == _utc(2026, 3, 29, 1, 30)  # 02:30 BST: the documented behaviour
    assert local.next_start(after) == _utc(2026, 3, 29, 1, 30)  # the same with the machine's local time


def test_daemon_repetitions_start_only_on_allowed_days() -> None:
    cal = _calendar(at="08:00", days="weekdays", timezone="Europe/London")
    daemon = CampaignDaemonConfig(enabled=True, interval="6h")
    thursday_evening = _utc(2026, 6, 4, 19, 0)
    state = schedule.initial_state(daemon, thursday_evening, cal)
    assert state["next_start"] == _utc(2026, 6, 5, 7, 0).isoformat()  # Friday 08:00 BST
    assert state["days"] == ["mon", "tue", "wed", "thu", "fri"] and state["timezone"] == "Europe/London"
    # a repetition ending Friday 12:00 BST: 6 h later is still Friday, so the interval decides
    state = schedule.after_repetition(state, _utc(2026, 6, 5, 11, 0), cal)
    assert state["next_start"] == _utc(2026, 6, 5, 17, 0).isoformat() and state["repetitions_done"] == 1
    # one ending Friday 20:00 BST: 6 h later is Saturday, so the next start is Monday 08:00
    state = schedule.after_repetition(state, _utc(2026, 6, 5, 19, 0), cal)
    assert state["next_start"] == _utc(2026, 6, 8, 7, 0).isoformat()
    # without a start time the first moment of the next allowed day
    midnight = _calendar(days="weekdays", timezone="Europe/London")
    state = schedule.after_repetition(state, _utc(2026, 6, 5, 19, 0), midnight)
    assert state["next_start"] == _utc(2026, 6, 7, 23, 0).isoformat()  # Monday 00:00 BST


def test_a_deadline_still_ends_the_daemon() -> None:
    cal = _calendar(days=["mon"], timezone="UTC")
    daemon = CampaignDaemonConfig(enabled=True, interval="1h", total_duration="2h")
    monday = _utc(2026, 6, 8, 22, 0)
    state = schedule.initial_state(daemon, monday, cal)
    state = schedule.after_repetition(state, _utc(2026, 6, 8, 23, 30), cal)  # next would be Tuesday: next Monday
    assert state["next_start"] == _utc(2026, 6, 15, 0, 0).isoformat()
    assert not schedule.may_start(state, _utc(2026, 6, 8, 23, 30))  # past the 2 h deadline by then


@pytest.mark.slow
def test_a_campaign_waits_for_an_allowed_day(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.campaign import helpers as h

    day = dt.datetime.now(UTC).date() + dt.timedelta(days=2)
    weekday = day.strftime("%a").lower()
    sweep = tmp_path / "sweep"
    proc = h.start(sweep, f"campaign.schedule.days=[{weekday}]", "campaign.schedule.timezone=UTC")
    m = h.wait_for(proc, sweep, lambda m: bool(m.schedule.get("next_start")), timeout=120)
    h.kill(proc)
    assert m.schedule["next_start"] == dt.datetime(day.year, day.month, day.day, tzinfo=UTC).isoformat()
    assert m.schedule["days"] == [weekday] and m.schedule["timezone"] == "UTC"
    assert {j.status for j in m.jobs} == {"pending"}  # nothing ran before the day came
