"""Schedules: cron parsing and evaluation (fields, names, steps, day-of-month/day-of-week, time zones and
daylight-saving changes), periods, which tick is due after downtime, and the SDK's checks."""

from __future__ import annotations

import datetime as dt

import pytest

import vivace
from vivace import exception as exc
from vivace.protocol.functions import FunctionSpec, SpecError
from vivace.protocol.schedules import Cron, ScheduleError, check_schedule, due_tick, next_tick

UTC = dt.UTC


def ts(*args: int, tz: str = "UTC") -> float:
    from vivace.protocol.schedules import zone

    return dt.datetime(*args, tzinfo=zone(tz)).timestamp()


def nexts(expr: str, start: float, n: int, tz: str = "UTC") -> list[str]:
    out, t = [], start
    cron = Cron(expr)
    from vivace.protocol.schedules import zone

    for _ in range(n):
        t = cron.next_after(t, tz)
        out.append(dt.datetime.fromtimestamp(t, zone(tz)).strftime("%a %Y-%m-%d %H:%M %Z"))
    return out


def test_steps_ranges_lists_and_names() -> None:
    start = ts(2026, 1, 1, 0, 0)  # a Thursday
    assert nexts("*/20 * * * *", start, 4) == [
        "Thu 2026-01-01 00:20 UTC", "Thu 2026-01-01 00:40 UTC", "Thu 2026-01-01 01:00 UTC",
        "Thu 2026-01-01 01:20 UTC",
    ]  # fmt: skip
    assert nexts("0 9 * * mon-fri", start, 3) == [
        "Thu 2026-01-01 09:00 UTC", "Fri 2026-01-02 09:00 UTC", "Mon 2026-01-05 09:00 UTC",
    ]  # fmt: skip
    assert nexts("30 8,17 1 jan,jul *", start, 3) == [
        "Thu 2026-01-01 08:30 UTC", "Thu 2026-01-01 17:30 UTC", "Wed 2026-07-01 08:30 UTC",
    ]  # fmt: skip
    assert nexts("5/30 1-3/2 * * *", start, 3) == [
        "Thu 2026-01-01 01:05 UTC", "Thu 2026-01-01 01:35 UTC", "Thu 2026-01-01 03:05 UTC",
    ]  # fmt: skip
    assert nexts("0 0 * * 7", start, 1) == ["Sun 2026-01-04 00:00 UTC"]  # 7 is Sunday as well as 0


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # Vixie cron: the 13th of each month, and every Friday
    assert nexts("0 0 13 * fri", ts(2026, 2, 1), 4) == [
        "Fri 2026-02-06 00:00 UTC", "Fri 2026-02-13 00:00 UTC", "Fri 2026-02-20 00:00 UTC",
        "Fri 2026-02-27 00:00 UTC",
    ]  # fmt: skip
    assert nexts("0 0 13 * fri", ts(2026, 3, 7), 2) == [
        "Fri 2026-03-13 00:00 UTC",
        "Fri 2026-03-20 00:00 UTC",
    ]


def test_29_february_comes_round() -> None:
    assert nexts("0 12 29 2 *", ts(2026, 3, 1), 2) == ["Tue 2028-02-29 12:00 UTC", "Sun 2032-02-29 12:00 UTC"]


def test_time_zones_and_daylight_saving() -> None:
    # 02:30 does not exist in Paris on 2026-03-29 (clocks go 02:00 -> 03:00): that day it does not fire
    assert nexts("30 2 * * *", ts(2026, 3, 27, 12, 0, tz="Europe/Paris"), 3, "Europe/Paris") == [
        "Sat 2026-03-28 02:30 CET", "Mon 2026-03-30 02:30 CEST", "Tue 2026-03-31 02:30 CEST",
    ]  # fmt: skip
    # 02:30 happens twice on 2026-10-25 (03:00 -> 02:00): it fires once
    got = nexts("30 2 * * *", ts(2026, 10, 24, 12, 0, tz="Europe/Paris"), 2, "Europe/Paris")
    assert got == ["Sun 2026-10-25 02:30 CEST", "Mon 2026-10-26 02:30 CET"]
    # 9 o'clock in New York is 14:00 UTC in winter
    t = Cron("0 9 * * *").next_after(ts(2026, 1, 10), "America/New_York")
    assert dt.datetime.fromtimestamp(t, UTC).hour == 14


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("* * * *", "5"),
        ("* * * * * *", "5"),
        ("60 * * * *", "0-59"),
        ("* 24 * * *", "0-23"),
        ("* * 0 * *", "1-31"),
        ("* * * 13 *", "1-12"),
        ("* * * * 8", "0-7"),
        ("*/0 * * * *", "at least 1"),
        ("5-1 * * * *", "backwards"),
        ("* * * foo *", "name"),
        ("a * * * *", "not a number"),
        ("0 0 31 2 *", "no day"),
        ("@daily", "5"),
        ("", "five fields"),
    ],
)
def test_bad_cron_expressions_say_what_is_wrong(expr: str, problem: str) -> None:
    with pytest.raises(ScheduleError, match=problem):
        Cron(expr)


def test_check_schedule() -> None:
    assert check_schedule({"cron": " 0  9 * * * ", "timezone": "UTC"}) == {
        "cron": "0 9 * * *",
        "timezone": "UTC",
    }
    assert check_schedule({"period": 60}) == {"period": 60.0}
    for bad in (
        {"period": 0.5},
        {"period": True},
        {"cron": "* * * * *"},
        {"cron": "* * * * *", "timezone": "Mars/Base"},
        [],
    ):
        with pytest.raises(ScheduleError):
            check_schedule(bad)
    with pytest.raises(SpecError, match="period"):
        FunctionSpec(name="f", module="m", qualname="f", schedule={"period": 0}).validate()


def test_period_ticks_count_from_the_anchor() -> None:
    s = {"period": 10.0}
    assert next_tick(s, 1000.0, 1000.0) == 1010.0
    assert next_tick(s, 1015.0, 1000.0) == 1020.0
    assert due_tick(s, None, 1000.0, 1009.0) is None
    assert due_tick(s, None, 1000.0, 1010.0) == 1010.0
    assert due_tick(s, 1010.0, 1000.0, 1019.9) is None
    assert due_tick(s, 1010.0, 1000.0, 1055.0) == 1050.0  # after downtime: the latest only


def test_cron_due_tick_is_the_latest_missed_one() -> None:
    s = {"cron": "*/5 * * * *", "timezone": "UTC"}
    anchor = ts(2026, 1, 1, 0, 2)
    assert due_tick(s, None, anchor, ts(2026, 1, 1, 0, 4)) is None
    assert due_tick(s, None, anchor, ts(2026, 1, 1, 0, 5)) == ts(2026, 1, 1, 0, 5)
    fired = ts(2026, 1, 1, 0, 5)
    assert due_tick(s, fired, anchor, ts(2026, 1, 1, 0, 9, 59)) is None
    assert due_tick(s, fired, anchor, ts(2026, 1, 1, 1, 3)) == ts(2026, 1, 1, 1, 0)
    # a week down: only ticks of the last day are looked at, and the latest fires
    assert due_tick(s, fired, anchor, ts(2026, 1, 8, 12, 7)) == ts(2026, 1, 8, 12, 5)


def test_sdk_schedules() -> None:
    assert vivace.Period(minutes=5)._spec() == {"period": 300.0}
    assert vivace.Period(days=1, seconds=1)._spec() == {"period": 86401.0}
    assert vivace.Cron("0 9 * * mon-fri", timezone="Europe/Paris")._spec() == {
        "cron": "0 9 * * mon-fri",
        "timezone": "Europe/Paris",
    }
    with pytest.raises(exc.InvalidError, match="5"):
        vivace.Cron("every day")
    with pytest.raises(exc.InvalidError, match="time zone"):
        vivace.Cron("* * * * *", timezone="Nowhere/Land")
    with pytest.raises(exc.InvalidError, match="Period"):
        vivace.Period()
    with pytest.raises(exc.InvalidError, match="non-negative"):
        vivace.Period(minutes=-1)
    app = vivace.App("sched")

    @app.function(schedule=vivace.Period(hours=1), serialized=True)
    def hourly() -> None:
        pass

    assert hourly.spec.schedule == {"period": 3600.0}
    with pytest.raises(exc.InvalidError, match="no arguments"):

        @app.function(schedule=vivace.Cron("* * * * *"), serialized=True)
        def needs(x: int) -> None:
            pass

    with pytest.raises(exc.InvalidError, match=r"vivace\.Cron"):

        @app.function(schedule="* * * * *", serialized=True)
        def wrong() -> None:
            pass
