"""Times and durations on the command line: ``7d`` ago, ``today``, ``month``, UTC dates."""

from __future__ import annotations

import calendar
import re
import time

import click

RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """A time for ``--since``/``--until``: ``7d``/``12h``/``30m`` ago, ``today``, ``month`` (its start),
    a UTC date ``2026-11-01`` or date and time ``2026-11-01T12:00``, or epoch seconds."""
    now = time.time() if now is None else now
    t = text.strip().lower()
    m = RELATIVE.fullmatch(t)
    if m:
        return now - float(m.group(1)) * UNITS[m.group(2)]
    g = time.gmtime(now)
    if t == "today":
        return float(calendar.timegm((g.tm_year, g.tm_mon, g.tm_mday, 0, 0, 0)))
    if t == "month":
        return float(calendar.timegm((g.tm_year, g.tm_mon, 1, 0, 0, 0)))
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return float(calendar.timegm(time.strptime(t.upper() if "T" in fmt else t, fmt)))
        except ValueError:
            pass
    try:
        return float(t)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give a duration ago (7d, 12h, 30m), 'today', 'month', a UTC date (2026-11-01) "
            "or date and time (2026-11-01T12:00)"
        ) from None


def parse_duration(text: str, hint: str) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a plain number of seconds."""
    t = text.strip().lower()
    m = RELATIVE.fullmatch(t)
    if m:
        return float(m.group(1)) * UNITS[m.group(2)]
    try:
        value = float(t)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise click.BadParameter(f"{text!r} is not a duration (30d, 12h, 90m, 45s, 2w)", param_hint=hint)
    return value
