"""Contract: metering (ADR 0015) is the same on both stores: phases, busy time, prices at placement,
late reports dated right, lost workers billed to their last heartbeat, usage groups, spend limits."""

from __future__ import annotations

import calendar
import json
from typing import Any

import pytest

from vivace.protocol.calls import FINAL, OutputStatus
from vivace.server.services import calls, containers, metering, workers
from vivace.server.services.calls import OutputIn
from vivace.server.services.metering import Prices
from vivace.server.services.workers import ContainerEvent

T0 = float(calendar.timegm((2030, 1, 31, 23, 0, 0)))  # an hour before a UTC midnight (and after now)
PRICES = Prices(cpu_core_second=0.001, memory_gib_second=0.0005, gpu_second={"H100": 0.01})


def at(t: float, op: Any) -> Any:
    """Run ``op`` in a transaction whose clock reads ``t`` (the store's clock, set by the test)."""

    def run(tx: Any) -> Any:
        tx.now = t
        return op(tx)

    return run


def gpu_worker(h: Any, pool: str = "gpu-pool") -> str:
    gpus = [{"index": 0, "uuid": "GPU-0", "type": "H100", "memory_mib": 81559}]
    return str(
        h.w(
            lambda tx: workers.register(tx, "g1", 8.0, 65536, {"pool": pool}, ["process"], "test", None, gpus)
        )
    )


def started(h: Any, cid: str, t: float, ago: float = 0.0, image_s: float | None = None) -> None:
    wid = h.one("SELECT worker_id FROM containers WHERE id = ?", (cid,))
    h.w(
        at(
            t,
            lambda tx: workers.container_event(
                tx, wid, ContainerEvent(cid, "started", ago=ago, image_s=image_s)
            ),
        )
    )


def exited(h: Any, cid: str, t: float, ago: float = 0.0, **kw: Any) -> None:
    wid = h.one("SELECT worker_id FROM containers WHERE id = ?", (cid,))
    ev = ContainerEvent(cid, "exited", 0, "exited", ago=ago, **kw)
    h.w(at(t, lambda tx: workers.container_event(tx, wid, ev)))


def place(h: Any, t: float) -> list[tuple[str, str]]:
    created = h.w(at(t, containers.autoscale)).created
    h.w(at(t, containers.schedule))
    return [(c, h.token(c)) for c in created]


def lease(h: Any, ct: tuple[str, str], t: float, n: int = 1) -> list[Any]:
    return h.w(at(t, lambda tx: calls.lease_inputs(tx, ct[0], ct[1], n)))  # type: ignore[no-any-return]


def finish(h: Any, ct: tuple[str, str], seq: int, t: float, duration: float) -> None:
    out = OutputIn(seq, FINAL, OutputStatus.SUCCESS.value, b"r", None, None, duration)
    h.w(at(t, lambda tx: calls.put_outputs(tx, ct[0], ct[1], [out])))


def meter(h: Any, cid: str, now: float) -> metering.Meter:
    (m,) = h.w(at(now, lambda tx: metering.meters(tx, container_id=cid)))
    return m  # type: ignore[no-any-return]


def test_a_container_is_billed_from_up_to_stop_split_into_cold_busy_and_idle(h: Any) -> None:
    h.w(lambda tx: metering.set_pools(tx, {"gpu-pool": PRICES}))
    gpu_worker(h)
    fid = h.function(gpu=[{"type": "H100", "count": 1}], cpu=2.0, memory=2048, max_containers=1)
    call = h.call(fid, n=2)
    ((cid, tok),) = place(h, T0)
    row = h.sql("SELECT pool, gpu_type, gpu_count, rate, prices FROM containers WHERE id = ?", (cid,))[0]
    # the rate is fixed at placement: 2 cores, 2 GiB and one H100 at the pool's prices
    assert row[:3] == ("gpu-pool", "H100", 1)
    assert row[3] == pytest.approx(2 * 0.001 + 2 * 0.0005 + 0.01)
    assert json.loads(row[4])["gpu_second"] == {"H100": 0.01}
    # the worker reports the start 2 s late: it happened at T0 + 3, its image was ready 1 s before
    started(h, cid, T0 + 5, ago=2.0, image_s=1.0)
    phases = h.w(lambda tx: metering.describe_container(tx, cid))["phases"]
    assert (phases["image_ready_at"], phases["started_at"]) == (T0 + 2, T0 + 3)
    # @enter takes 2 s (the first lease marks it ready); two inputs overlap: busy 10..20 and 30..35
    (a,) = lease(h, (cid, tok), T0 + 5)
    finish(h, (cid, tok), a.seq, T0 + 10, 5.0)
    (b,) = lease(h, (cid, tok), T0 + 10)
    finish(h, (cid, tok), b.seq, T0 + 20, 10.0)
    m = meter(h, cid, T0 + 25)  # while it runs: billed up to now, idle since its last input
    assert (m.billed_s, m.cold_s, m.busy_s, m.idle_s) == pytest.approx((22.0, 2.0, 15.0, 5.0))
    exited(h, cid, T0 + 43, ago=3.0, cpu_used_s=12.5, memory_peak=1 << 30)  # exited at T0 + 40
    m = meter(h, cid, T0 + 1000)  # stopped: the clock moving on changes nothing
    assert (m.billed_s, m.cold_s, m.busy_s, m.idle_s) == pytest.approx((37.0, 2.0, 15.0, 20.0))
    assert m.total == pytest.approx(37.0 * row[3])
    assert m.cost["gpu"] == pytest.approx(37.0 * 0.01)
    info = h.w(lambda tx: metering.describe_container(tx, cid))
    assert (info["cpu_used_s"], info["memory_peak"], info["reserved"]) == (
        12.5,
        1 << 30,
        {"cpu": 2.0, "memory_mib": 2048},
    )
    # the call's cost: its inputs' run time at the container's rate
    got = h.w(lambda tx: metering.describe_call(tx, call))
    assert got["busy_s"] == pytest.approx(15.0) and got["cost"] == pytest.approx(15.0 * row[3])
    assert got["inputs"] == {"done": 2} and got["retried_inputs"] == 0


def test_busy_time_counts_overlapping_inputs_once(h: Any) -> None:
    h.worker()
    fid = h.function(max_inputs=4, target_inputs=4)
    h.call(fid, n=3)
    ((cid, tok),) = place(h, T0)
    started(h, cid, T0)
    got = lease(h, (cid, tok), T0 + 1, n=3)
    assert len(got) == 3
    finish(h, (cid, tok), got[0].seq, T0 + 2, 1.0)
    finish(h, (cid, tok), got[1].seq, T0 + 4, 3.0)
    finish(h, (cid, tok), got[2].seq, T0 + 6, 5.0)  # three inputs, one busy stretch: 1..6
    assert meter(h, cid, T0 + 10).busy_s == pytest.approx(5.0)


def test_a_stopped_container_ends_its_busy_time_and_requeued_inputs_do_not_reopen_it(h: Any) -> None:
    h.worker()
    fid = h.function(max_inputs=2, target_inputs=2)
    h.call(fid, n=2)
    ((cid, tok),) = place(h, T0)
    started(h, cid, T0)
    lease(h, (cid, tok), T0 + 1, n=2)
    exited(h, cid, T0 + 9, ago=1.0)  # died at T0 + 8 holding both inputs; they go back to the queue
    assert h.sql("SELECT held, busy_since, busy_s FROM containers WHERE id = ?", (cid,)) == [(0, None, 7.0)]
    m = meter(h, cid, T0 + 100)
    assert (m.billed_s, m.busy_s) == pytest.approx((8.0, 7.0))


def test_a_lost_workers_containers_are_billed_to_their_last_heartbeat(h: Any) -> None:
    wid = h.worker()
    fid = h.function(min_containers=1)
    ((cid, _),) = place(h, T0)
    started(h, cid, T0 + 1)
    h.w(at(T0 + 20, lambda tx: workers.poll(tx, wid, [cid])))  # last seen alive at T0 + 20
    dead, _ = h.w(at(T0 + 200, lambda tx: workers.reap_dead_workers(tx, 30.0)))
    assert dead == [wid]
    assert meter(h, cid, T0 + 500).billed_s == pytest.approx(19.0)
    assert fid


def test_a_replayed_report_changes_nothing(h: Any) -> None:
    """A worker retries a report whose answer it lost: the container is not billed twice or moved."""
    h.worker()
    fid = h.function(min_containers=1)
    ((cid, _),) = place(h, T0)
    started(h, cid, T0 + 2)
    started(h, cid, T0 + 9)
    exited(h, cid, T0 + 12)
    exited(h, cid, T0 + 30)
    assert meter(h, cid, T0 + 60).billed_s == pytest.approx(10.0)
    assert fid


def test_usage_groups_and_splits_containers_at_utc_midnight(h: Any) -> None:
    h.w(lambda tx: metering.set_pools(tx, {"default": Prices(cpu_core_second=0.01)}))
    h.worker()
    f = h.function("f", min_containers=1, cpu=1.0)
    g = h.function("g", min_containers=1, cpu=2.0)
    (cf, _), (cg, _) = sorted(place(h, T0), key=lambda c: c[0])
    fn_of = dict(h.sql("SELECT id, function_id FROM containers"))
    if fn_of[cf] != f:
        cf, cg = cg, cf
    started(h, cf, T0 + 1800)  # 23:30 → 00:30 the next day
    exited(h, cf, T0 + 5400)
    started(h, cg, T0 + 3600)  # 00:00 → 00:10
    exited(h, cg, T0 + 4200)
    assert g
    rows = h.w(at(T0 + 9000, lambda tx: metering.usage(tx, 0.0, float("inf"), ("function", "day"))))
    got = {(r["function"].split(".")[-1], r["day"]): (r["billed_s"], r["cost"]) for r in rows}
    assert got == {
        ("f", "2030-01-31"): pytest.approx((1800.0, 18.0)),
        ("f", "2030-02-01"): pytest.approx((1800.0, 18.0)),
        ("g", "2030-02-01"): pytest.approx((600.0, 12.0)),
    }
    # a window clips: from midnight on, f is billed its second half hour
    (total,) = h.w(at(T0 + 9000, lambda tx: metering.usage(tx, T0 + 3600, T0 + 9000, ())))
    assert (total["containers"], total["billed_s"], total["cost"]) == (
        2,
        pytest.approx(2400.0),
        pytest.approx(30.0),
    )
    assert total["core_s"] == pytest.approx(1800.0 + 1200.0)


def test_prices_changed_later_do_not_rewrite_what_was_billed(h: Any) -> None:
    h.w(lambda tx: metering.set_pools(tx, {"default": Prices(cpu_core_second=0.01)}))
    h.worker()
    h.function(min_containers=1, cpu=1.0)
    ((cid, _),) = place(h, T0)
    h.w(lambda tx: metering.set_pools(tx, {"default": Prices(cpu_core_second=1.0)}))
    started(h, cid, T0)
    exited(h, cid, T0 + 10)
    assert meter(h, cid, T0 + 20).total == pytest.approx(0.1)
    pools = h.w(metering.list_pools)
    assert [(p["name"], p["prices"]["cpu_core_second"]) for p in pools] == [("default", 1.0)]


def test_a_reached_spend_limit_starts_no_container_and_fails_what_waits(h: Any) -> None:
    h.w(lambda tx: metering.set_pools(tx, {"default": Prices(cpu_core_second=0.01)}))
    h.worker()
    fid = h.function("f", cpu=1.0)
    app = h.one("SELECT app_id FROM functions WHERE id = ?", (fid,))
    h.w(lambda tx: tx.execute("UPDATE apps SET name = 'shop' WHERE id = ?", (app,)))
    now = T0 + 7200
    h.w(at(now, lambda tx: metering.set_limit(tx, "app:shop", 1.0, "month")))
    h.call(fid, n=1)
    ((cid, _),) = place(h, now - 300)
    started(h, cid, now - 200)
    lim = h.w(at(now, metering.limits))[0]
    assert lim["app"] == "shop" and lim["spent"] == pytest.approx(2.0) and lim["reached"] is True
    blocked = h.w(at(now, metering.reached))
    assert set(blocked) == {"shop"} and "spend limit" in blocked["shop"]
    assert metering.why_blocked(blocked, "shop") == blocked["shop"]
    assert metering.why_blocked(blocked, "other") is None and metering.why_blocked(blocked, None) is None
    exited(h, cid, now)
    call = h.call(fid, n=2)
    res = h.w(at(now, lambda tx: containers.autoscale(tx, blocked)))
    assert res.created == [] and call in res.failed
    errors = [json.loads(e) for (e,) in h.sql("SELECT error FROM outputs WHERE call_id = ?", (call,))]
    assert len(errors) == 2 and all(e["type"] == "ResourceExhaustedError" for e in errors)
    assert "'shop' reached its spend limit" in errors[0]["message"]
    said = h.sql("SELECT stream, line FROM logs WHERE app_id = ? AND stream = 'system'", (app,))
    assert said == [("system", f"no new containers: {blocked['shop']}")]  # the app's logs say why too
    # another app is not held back by this app's limit; the workspace's limit holds every app back
    h.function("g", min_containers=1)
    assert len(h.w(at(now, lambda tx: containers.autoscale(tx, blocked))).created) == 1
    h.w(at(now, lambda tx: metering.set_limit(tx, "*", 0.5, "day")))
    everyone = h.w(at(now, metering.reached))
    assert "the workspace" in str(metering.why_blocked(everyone, "anything"))
    assert h.w(lambda tx: metering.remove_limit(tx, "*")) is True
    assert h.w(lambda tx: metering.remove_limit(tx, "*")) is False


def test_an_app_with_no_spend_has_no_limit_reached(h: Any) -> None:
    h.w(lambda tx: metering.set_limit(tx, "app:quiet", 0.0, "total"))
    h.w(lambda tx: metering.set_limit(tx, "app:quiet", 5.0, "day"))  # changed, not doubled
    (lim,) = h.w(metering.limits)
    assert (lim["amount"], lim["period"], lim["spent"], lim["reached"]) == (5.0, "day", 0.0, False)
    assert h.w(metering.reached) == {}
