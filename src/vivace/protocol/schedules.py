"""Schedules as they travel in ``FunctionSpec.schedule``, and when they fire.

Two kinds, as in Modal:

* ``{"cron": "m h dom mon dow", "timezone": "UTC"}``: the five standard fields. Each is ``*``, a value, a
  range ``a-b``, a list ``a,b``, and any of those with a step ``/n``; months and weekdays also by their
  English three-letter names; weekday 0 and 7 are Sunday. As in Vixie cron, when both day of month and
  day of week are restricted, a day matching either fires. Times are wall-clock times in ``timezone``
  (an IANA name); a wall time skipped by a daylight-saving change does not fire, one repeated fires once.
* ``{"period": seconds}``: every ``seconds`` from an anchor (the function's creation).

The control plane fires a function at most once per tick (a unique row per function and tick), and after
downtime only the latest missed tick (no backlog of runs).
"""

import datetime as dt
import functools
import re
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

MIN_PERIOD = 1.0
MAX_PERIOD = 366 * 86400.0
MAX_CRON_LENGTH = 200
CATCH_UP = 86400.0  # after downtime, ticks older than this are not looked at (only the latest fires)

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, start=1)}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, lowest, highest, names)
_FIELDS: Tuple[Tuple[str, int, int, Dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ITEM = re.compile(r"^(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/([0-9]+))?$")


class ScheduleError(ValueError):
    """A schedule is malformed: the message says which part and why."""


class Cron:
    """A parsed cron expression: the sets of values each field allows."""

    def __init__(self, expr: str) -> None:
        if not isinstance(expr, str) or not expr.strip() or len(expr) > MAX_CRON_LENGTH:
            raise ScheduleError(f"a cron expression is a string of five fields, got {expr!r}")
        parts = expr.lower().split()
        if len(parts) != 5:
            raise ScheduleError(
                f"cron expression {expr!r} has {len(parts)} fields; it needs 5: minute hour day-of-month "
                "month day-of-week"
            )
        sets = [_parse_field(parts[i], *_FIELDS[i]) for i in range(5)]
        self.minutes, self.hours, self.days, self.months, weekdays = sets
        self.weekdays = frozenset(d % 7 for d in weekdays)  # 7 is Sunday too
        self.any_day = parts[2].startswith("*")
        self.any_weekday = parts[4].startswith("*")
        if not any(_day_exists(m, d) for m in self.months for d in self.days) and self.any_weekday:
            raise ScheduleError(f"cron expression {expr!r} names no day that exists")

    def _day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, ts: float, timezone: str) -> float:
        """The first time after ``ts`` (a Unix time) the expression matches, as a Unix time."""
        tz = zone(timezone)
        local = dt.datetime.fromtimestamp(ts, tz).replace(second=0, microsecond=0, tzinfo=None)
        start = local + dt.timedelta(minutes=1)
        day = start.date()
        for _ in range(366 * 5):  # every day of five years: a 29 February comes round
            if self._day_matches(day):
                first = (start.hour, start.minute) if day == start.date() else (0, 0)
                for hour in sorted(h for h in self.hours if h >= first[0]):
                    low = first[1] if hour == first[0] else 0
                    for minute in sorted(m for m in self.minutes if m >= low):
                        found = _to_unix(dt.datetime(day.year, day.month, day.day, hour, minute), tz)
                        if found is not None and found > ts:
                            return found
            day += dt.timedelta(days=1)
        raise ScheduleError("the cron expression never fires")


def _parse_field(text: str, name: str, low: int, high: int, names: Dict[str, int]) -> FrozenSet[int]:
    values: List[int] = []
    for item in text.split(","):
        m = _ITEM.match(item)
        if m is None:
            raise ScheduleError(f"cron {name} {text!r}: {item!r} is not a value, range or step")
        span, step_text = m.group(1), m.group(2)
        step = int(step_text) if step_text is not None else 1
        if step < 1:
            raise ScheduleError(f"cron {name} {text!r}: a step must be at least 1")
        if span == "*":
            a, b = low, high if name != "day of week" else 6
        elif "-" in span:
            a_text, b_text = span.split("-", 1)
            a, b = _value(a_text, name, low, high, names), _value(b_text, name, low, high, names)
            if a > b:
                raise ScheduleError(f"cron {name} {text!r}: range {span} runs backwards")
        else:
            a = _value(span, name, low, high, names)
            b = high if step_text is not None else a  # "5/15": from 5 to the end, every 15
        values.extend(range(a, b + 1, step))
    return frozenset(values)


def _value(text: str, name: str, low: int, high: int, names: Dict[str, int]) -> int:
    if text in names:
        return names[text]
    if not text.isdigit():
        raise ScheduleError(f"cron {name}: {text!r} is not a number" + (" or a name" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise ScheduleError(f"cron {name}: {value} is outside {low}-{high}")
    return value


def _day_exists(month: int, day: int) -> bool:
    return day <= (29 if month == 2 else 30 if month in (4, 6, 9, 11) else 31)


def zone(name: str) -> Any:
    """The ``tzinfo`` of an IANA time zone name."""
    if name in ("UTC", "Etc/UTC"):
        return dt.timezone.utc
    try:
        from zoneinfo import ZoneInfo
    except ImportError:  # Python 3.8: only UTC
        raise ScheduleError(f"time zone {name!r} needs Python 3.9 or later (zoneinfo)") from None
    try:
        return ZoneInfo(name)
    except (ValueError, OSError, KeyError):
        raise ScheduleError(f"unknown time zone {name!r}: use an IANA name like 'Europe/Paris'") from None


def _to_unix(local: dt.datetime, tz: Any) -> Optional[float]:
    """A wall-clock time in ``tz`` as a Unix time; None if that wall time does not exist there (a
    daylight-saving gap). A repeated wall time is its first occurrence."""
    aware = local.replace(tzinfo=tz, fold=0)
    back = dt.datetime.fromtimestamp(aware.timestamp(), tz).replace(tzinfo=None)
    return aware.timestamp() if back == local else None


@functools.lru_cache(maxsize=256)
def parsed(expr: str) -> Cron:
    return Cron(expr)


def check_schedule(raw: Any) -> Dict[str, Any]:
    """``FunctionSpec.schedule``, validated: {"cron": expr, "timezone": name} or {"period": seconds}."""
    if not isinstance(raw, dict):
        raise ScheduleError("a schedule must be an object")
    if set(raw) == {"cron", "timezone"}:
        tz = raw["timezone"]
        if not isinstance(tz, str) or not tz:
            raise ScheduleError("a cron schedule's timezone must be an IANA time zone name")
        zone(tz)
        Cron(raw["cron"])
        return {"cron": " ".join(raw["cron"].split()), "timezone": tz}
    if set(raw) == {"period"}:
        p = raw["period"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not MIN_PERIOD <= p <= MAX_PERIOD:
            raise ScheduleError(f"a period must be from {MIN_PERIOD:g} s to 366 days, got {p!r}")
        return {"period": float(p)}
    raise ScheduleError("a schedule is {'cron': ..., 'timezone': ...} or {'period': seconds}")


def next_tick(schedule: Dict[str, Any], after: float, anchor: float) -> float:
    """The schedule's first tick after ``after``; a period counts from ``anchor``."""
    if "period" in schedule:
        period = float(schedule["period"])
        if after < anchor:
            return anchor + period
        return anchor + (int((after - anchor) // period) + 1) * period
    return parsed(schedule["cron"]).next_after(after, schedule["timezone"])


def due_tick(schedule: Dict[str, Any], last: Optional[float], anchor: float, now: float) -> Optional[float]:
    """The latest tick in (``last``, ``now``] (``last`` None: since ``anchor``), or None: the one to fire
    now. Ticks more than ``CATCH_UP`` seconds old are not looked at."""
    since = max(last if last is not None else anchor, now - CATCH_UP)
    if "period" in schedule:
        period = float(schedule["period"])
        if now < anchor + period:
            return None
        latest = anchor + int((now - anchor) // period) * period
        return latest if latest > since else None
    cron = parsed(schedule["cron"])
    found = None
    tick = cron.next_after(since, schedule["timezone"])
    while tick <= now:
        found = tick
        tick = cron.next_after(tick, schedule["timezone"])
    return found
