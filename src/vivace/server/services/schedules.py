"""Schedules: fire each active function's due tick exactly once.

Each tick a schedule fires is a row ``(function_id, tick_at)`` in ``schedule_ticks``, inserted in the
same transaction as the call it makes: two control-plane replicas (or one restarted mid-tick) that both
find a tick due insert the same key, and only the one whose insert lands makes a call. After downtime
only the latest missed tick fires (``protocol.schedules.due_tick``).
"""

from __future__ import annotations

import json
import logging
import pickle
from typing import Any

from vivace.protocol import ids
from vivace.protocol.calls import CallKind
from vivace.protocol.schedules import ScheduleError, due_tick, next_tick
from vivace.server.services import calls
from vivace.server.store.base import Tx

log = logging.getLogger("vivace.server")

# a scheduled call's input: no arguments, as the SDK would send them (args, kwargs)
NO_ARGS = pickle.dumps(((), {}), protocol=4)


def _scheduled(
    tx: Tx, app_id: str | None = None
) -> list[tuple[str, str, dict[str, Any], float, float | None]]:
    """(function, its name, schedule, anchor, last tick) of active scheduled functions."""
    sql = (
        "SELECT f.id, f.name, f.schedule, f.created_at, "
        "(SELECT MAX(t.tick_at) FROM schedule_ticks t WHERE t.function_id = f.id) "
        "FROM functions f WHERE f.active = 1 AND f.schedule IS NOT NULL"
    )
    args: tuple[Any, ...] = ()
    if app_id is not None:
        sql += " AND f.app_id = ?"
        args = (app_id,)
    out = []
    for fid, name, raw, created, last in tx.fetchall(sql, args):
        try:
            schedule = json.loads(raw)
        except ValueError:
            continue
        out.append((str(fid), str(name), schedule, float(created), None if last is None else float(last)))
    return out


def _due(tx: Tx) -> list[tuple[str, float]]:
    """(function, tick) for each schedule with a tick due now that has not fired."""
    out = []
    for fid, _name, schedule, anchor, last in _scheduled(tx):
        try:
            tick = due_tick(schedule, last, anchor, tx.now)
        except ScheduleError as err:  # validated when registered: only a changed zone database gets here
            log.warning("schedule of function %s cannot fire: %s", fid, err)
            continue
        if tick is not None:
            out.append((fid, tick))
    return out


def anything_due(tx: Tx) -> bool:
    """Whether :func:`fire_due` has work (a read, so that an idle loop takes no write lock)."""
    return bool(_due(tx))


def fire_due(tx: Tx) -> list[tuple[str, str, float]]:
    """Make the calls of every schedule whose tick is due and not fired yet: [(function, call, tick)]."""
    fired = []
    for fid, tick in _due(tx):
        call_id = ids.new_id(ids.FUNCTION_CALL)
        inserted = tx.execute(
            "INSERT INTO schedule_ticks (function_id, tick_at, call_id, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (function_id, tick_at) DO NOTHING",
            (fid, tick, call_id, tx.now),
        )
        if not inserted:
            continue  # another replica fired this tick
        calls.create_call(tx, call_id, fid, CallKind.SCHEDULE.value)
        calls.put_inputs(tx, call_id, [(0, NO_ARGS, None)], 1)
        fired.append((fid, call_id, tick))
    return fired


def upcoming(tx: Tx, app_id: str) -> list[dict[str, Any]]:
    """An app's scheduled functions with their schedule, last tick and next run."""
    out = []
    for fid, name, schedule, anchor, last in _scheduled(tx, app_id):
        try:
            nxt: float | None = next_tick(schedule, max(tx.now, last or 0.0), anchor)
        except ScheduleError:
            nxt = None
        out.append(
            {"function_id": fid, "name": name, "schedule": schedule, "last_tick": last, "next_run": nxt}
        )
    return out
