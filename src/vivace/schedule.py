"""``Cron`` and ``Period``: when the control plane calls a function by itself (``schedule=``).

The function takes no arguments. It fires while its app runs: deployed (``vivace deploy``) or for the
length of ``app.run()``; each tick fires once, even with several control-plane replicas or a restart in
between, and after downtime only the latest missed tick fires. ``vivace app schedules APP`` shows the
next run of each.
"""

from __future__ import annotations

from typing import Any

from vivace import exception as exc
from vivace.protocol.schedules import MAX_PERIOD, MIN_PERIOD, ScheduleError, check_schedule


class Schedule:
    """A schedule: ``Cron`` or ``Period``."""

    def _spec(self) -> dict[str, Any]:
        raise NotImplementedError


class Cron(Schedule):
    """Cron syntax (``"m h dom mon dow"``, e.g. ``"*/5 * * * *"`` or ``"0 9 * * mon-fri"``) in
    ``timezone`` (an IANA name; default UTC)."""

    def __init__(self, cron_string: str, timezone: str = "UTC") -> None:
        try:
            self._checked = check_schedule({"cron": cron_string, "timezone": timezone})
        except ScheduleError as err:
            raise exc.InvalidError(str(err)) from None
        self.cron_string = self._checked["cron"]
        self.timezone = timezone

    def _spec(self) -> dict[str, Any]:
        return dict(self._checked)

    def __repr__(self) -> str:
        return f"Cron({self.cron_string!r}, timezone={self.timezone!r})"


class Period(Schedule):
    """Every so long, counted from when the function was first deployed (or the app started)."""

    def __init__(self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0) -> None:
        total = 0.0
        for what, value in (("days", days), ("hours", hours), ("minutes", minutes), ("seconds", seconds)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise exc.InvalidError(f"Period({what}=...) must be a non-negative number, got {value!r}")
        total = days * 86400 + hours * 3600 + minutes * 60 + seconds
        if not MIN_PERIOD <= total <= MAX_PERIOD:
            raise exc.InvalidError(
                f"a Period must be from {MIN_PERIOD:g} second to 366 days, got {total:g} s"
            )
        self.seconds = float(total)

    def _spec(self) -> dict[str, Any]:
        return {"period": self.seconds}

    def __repr__(self) -> str:
        return f"Period(seconds={self.seconds:g})"


def schedule_spec(value: Any) -> dict[str, Any] | None:
    """``schedule=`` as ``FunctionSpec.schedule``."""
    if value is None:
        return None
    if not isinstance(value, Schedule):
        raise exc.InvalidError(
            f"schedule must be vivace.Cron(...) or vivace.Period(...), got {type(value).__name__}"
        )
    return value._spec()
