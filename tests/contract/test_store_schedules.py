"""Contract: schedules fire each tick exactly once (a unique row per function and tick), on SQLite and
Postgres, with two control planes on one database racing for the same ticks."""

from __future__ import annotations

import pickle
import threading
from typing import Any

from vivace.protocol.functions import FunctionSpec
from vivace.server.services import apps
from vivace.server.services import schedules as svc
from vivace.server.store import open_store


def _scheduled(h: Any, schedule: dict[str, Any], name: str = "tick") -> tuple[str, str, float]:
    app_id = h.w(lambda tx: apps.create_app(tx, "sched", "deployed", "test"))["app_id"]
    spec = FunctionSpec(name=name, module="m", qualname=name, schedule=schedule)
    fid, _ = h.w(lambda tx: apps.register_function(tx, app_id, spec, b"definition"))
    return app_id, fid, float(h.one("SELECT created_at FROM functions WHERE id = ?", (fid,)))


def _fire(store: Any, now: float) -> list[tuple[str, str, float]]:
    def op(tx: Any) -> list[tuple[str, str, float]]:
        tx.now = now
        return svc.fire_due(tx)

    return store.write_sync(op)  # type: ignore[no-any-return]


def test_each_tick_fires_once_with_no_arguments(h: Any) -> None:
    _, fid, anchor = _scheduled(h, {"period": 60})
    assert _fire(h.store, anchor + 59) == []
    fired = _fire(h.store, anchor + 61)
    assert [(f, t) for f, _, t in fired] == [(fid, anchor + 60)]
    assert _fire(h.store, anchor + 62) == []  # the same tick again: nothing
    call_id = fired[0][1]
    assert h.one("SELECT kind FROM calls WHERE id = ?", (call_id,)) == "schedule"
    rows = h.sql("SELECT idx, args, state FROM inputs WHERE call_id = ?", (call_id,))
    assert len(rows) == 1 and rows[0][0] == 0 and rows[0][2] == "pending"
    assert pickle.loads(bytes(rows[0][1])) == ((), {})
    assert h.one("SELECT backlog FROM functions WHERE id = ?", (fid,)) == 1
    # three periods later (the control plane was down): only the latest tick fires
    fired = _fire(h.store, anchor + 60 * 4 + 1)
    assert [t for _, _, t in fired] == [anchor + 240]
    assert h.one("SELECT COUNT(*) FROM schedule_ticks WHERE function_id = ?", (fid,)) == 2


def test_a_stopped_app_or_a_function_without_a_schedule_never_fires(h: Any) -> None:
    app_id, _, anchor = _scheduled(h, {"period": 10})
    plain = FunctionSpec(name="plain", module="m", qualname="plain")
    h.w(lambda tx: apps.register_function(tx, app_id, plain, b"d"))
    h.w(lambda tx: apps.stop_app(tx, app_id, "test"))
    assert _fire(h.store, anchor + 100) == []


def test_a_redeploy_keeps_the_ticks_already_fired(h: Any) -> None:
    app_id, fid, anchor = _scheduled(h, {"period": 60})
    assert len(_fire(h.store, anchor + 61)) == 1
    changed = FunctionSpec(name="tick", module="m", qualname="tick", schedule={"period": 60}, timeout=99)
    again, _ = h.w(lambda tx: apps.register_function(tx, app_id, changed, b"new definition"))
    assert again == fid
    assert _fire(h.store, anchor + 62) == []


def test_two_control_planes_racing_fire_each_tick_once(h: Any) -> None:
    _, fid, anchor = _scheduled(h, {"cron": "* * * * *", "timezone": "UTC"})
    other = open_store(h.store.url)
    other.start()
    try:
        first_minute = (int(anchor) // 60 + 1) * 60
        nows = [first_minute + 60 * i + 1 for i in range(8)]
        fired: list[list[Any]] = [[], []]
        barrier = threading.Barrier(2)

        def replica(i: int, store: Any) -> None:
            for now in nows:
                barrier.wait()
                for _ in range(3):  # each replica's loop comes round more than once per tick
                    fired[i] += _fire(store, now)

        threads = [threading.Thread(target=replica, args=(i, s)) for i, s in enumerate((h.store, other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    ticks = sorted(t for f, _, t in fired[0] + fired[1])
    assert ticks == [float(first_minute + 60 * i) for i in range(8)]  # every minute, once
    assert h.one("SELECT COUNT(*) FROM calls WHERE function_id = ?", (fid,)) == 8


def test_upcoming_shows_the_next_run(h: Any) -> None:
    app_id, fid, anchor = _scheduled(h, {"period": 3600})

    def op(tx: Any) -> list[dict[str, Any]]:
        tx.now = anchor + 10
        return svc.upcoming(tx, app_id)

    (row,) = h.w(op)
    assert row["function_id"] == fid and row["name"] == "tick"
    assert row["next_run"] == anchor + 3600 and row["last_tick"] is None
