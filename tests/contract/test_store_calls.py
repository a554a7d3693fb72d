"""Contract: the call path (inputs, leases, outputs, retries, cancellation) is the same on both stores."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vivace.protocol.calls import FINAL, OutputStatus
from vivace.protocol.functions import FunctionSpec, RetryPolicy
from vivace.server.errors import Conflict, Gone, NotFound
from vivace.server.services import apps, calls, containers
from vivace.server.services.calls import MAX_SYSTEM_FAILURES, OutputIn

SUCCESS, FAILURE = OutputStatus.SUCCESS, OutputStatus.FAILURE


# -- apps and functions -----------------------------------------------------------------------------


def test_apps_and_functions_register_idempotently(h: Any) -> None:
    first = h.w(lambda tx: apps.create_app(tx, "svc", "deployed", "test"))
    again = h.w(lambda tx: apps.create_app(tx, "svc", "deployed", "test"))
    assert first["created"] is True and again == {"app_id": first["app_id"], "created": False}
    app_id = first["app_id"]

    spec = FunctionSpec(name="f", module="m", qualname="f", min_containers=1, max_containers=1)
    fid, stale = h.w(lambda tx: apps.register_function(tx, app_id, spec, b"v1"))
    assert stale == []
    assert h.w(lambda tx: apps.register_function(tx, app_id, spec, b"v1")) == (fid, [])
    assert h.w(lambda tx: apps.get_function(tx, fid)).spec == spec
    (c,) = h.containers(1)
    # a new definition keeps the id and names the containers that run the old one
    assert h.w(lambda tx: apps.register_function(tx, app_id, spec, b"v2")) == (fid, [c[0]])


# -- inputs -----------------------------------------------------------------------------------------


def test_put_inputs_is_idempotent_and_backlog_counts_pending_inputs(h: Any) -> None:
    fid = h.function()
    call = h.call(fid)
    assert h.put(call, [0, 1]) == 2
    # a retried upload: idx 1 again (other bytes) and a new idx 2; only idx 2 is stored, the first bytes win
    items = [(1, b"other", None), (2, b"args-2", None)]
    assert h.w(lambda tx: calls.put_inputs(tx, call, items, 3)) == (fid, 1)
    assert h.w(lambda tx: calls.put_inputs(tx, call, items, 3)) == (fid, 0)
    rows = h.sql("SELECT idx, args FROM inputs WHERE call_id = ? ORDER BY idx", (call,))
    assert [(i, bytes(a)) for i, a in rows] == [(0, b"args-0"), (1, b"args-1"), (2, b"args-2")]
    assert h.counters(fid) == (3, 0)
    assert h.pending_count(fid) == 3
    assert h.sql("SELECT inputs_added, inputs_total FROM calls WHERE id = ?", (call,)) == [(3, 3)]


def test_create_call_is_idempotent_per_function(h: Any) -> None:
    fid, other = h.function("f"), h.function("g")
    call = h.call(fid)
    assert h.w(lambda tx: calls.create_call(tx, call, fid, "map")) is False
    with pytest.raises(Conflict):
        h.w(lambda tx: calls.create_call(tx, call, other, "map"))
    with pytest.raises(NotFound):
        h.w(lambda tx: calls.create_call(tx, "fc-new", "fu-missing", "map"))
    with pytest.raises(NotFound):
        h.put("fc-missing", [0])


# -- leases -----------------------------------------------------------------------------------------


def test_leases_go_oldest_first_to_one_container_only(h: Any) -> None:
    fid = h.function(min_containers=2, max_containers=2)
    c1, c2 = h.containers(2)
    a, b = h.call(fid, 3), h.call(fid, 2)  # a's inputs are older than b's

    got1 = h.lease(c1, 2)
    assert [(i.call_id, i.idx, i.attempt, i.args) for i in got1] == [
        (a, 0, 1, b"args-0"),
        (a, 1, 1, b"args-1"),
    ]
    assert h.counters(fid) == (3, 2)
    assert h.sql("SELECT state, held FROM containers WHERE id = ?", (c1[0],)) == [("running", 2)]

    got2 = h.lease(c2, 10)
    assert [(i.call_id, i.idx) for i in got2] == [(a, 2), (b, 0), (b, 1)]
    assert h.counters(fid) == (0, 5)
    assert h.lease(c1, 10) == [] and h.lease(c2, 10) == []
    seqs = [i.seq for i in got1 + got2]
    assert len(set(seqs)) == 5 and seqs == sorted(seqs)
    for i in got1:
        row = h.input_row(i.seq)
        assert (row["state"], row["container_id"], row["lease_token"]) == ("leased", c1[0], c1[1])
        assert row["deadline"] > row["not_before"]


def test_lease_needs_the_containers_token(h: Any) -> None:
    fid = h.function(min_containers=1, max_containers=1)
    (c,) = h.containers(1)
    h.call(fid, 1)
    with pytest.raises(Gone):
        h.lease((c[0], "not-the-token"))
    with pytest.raises(NotFound):
        h.lease(("ta-missing", c[1]))
    assert h.counters(fid) == (1, 0)


# -- outputs ----------------------------------------------------------------------------------------


def test_outputs_need_the_lease_and_each_input_gets_exactly_one_final_output(h: Any) -> None:
    fid = h.function(min_containers=2, max_containers=2)
    c1, c2 = h.containers(2)
    call = h.call(fid, 2)
    i0, _ = h.lease(c1, 2)

    res = h.output(c2, i0.seq)  # another live container: rejected, and it keeps its own lease
    assert (res.accepted, res.rejected) == (0, 1)
    for who in ((c1[0], "not-the-token"), (c2[0], c1[1])):  # a token the container does not hold
        with pytest.raises(Gone):
            h.output(who, i0.seq)
    assert (h.output(c1, 10**9).rejected) == 1  # no such input
    assert h.outputs(call) == []

    res = h.output(c1, i0.seq, data=b"first")
    assert (res.accepted, res.rejected, res.calls) == (1, 0, {call})
    for status in (SUCCESS, FAILURE):
        assert h.output(c1, i0.seq, status, data=b"second").rejected == 1
    assert [(i, p, s, bytes(d)) for i, p, s, d in h.outputs(call)] == [(0, FINAL, "success", b"first")]
    assert h.input_row(i0.seq)["state"] == "done"
    assert h.counters(fid) == (0, 1)
    assert h.sql("SELECT held, served FROM containers WHERE id = ?", (c1[0],)) == [(1, 1)]
    assert h.one("SELECT outputs_done FROM calls WHERE id = ?", (call,)) == 1


def test_a_batch_with_two_final_outputs_for_one_input_keeps_the_first(h: Any) -> None:
    fid = h.function(min_containers=1, max_containers=1)
    (c,) = h.containers(1)
    call = h.call(fid, 1)
    (i0,) = h.lease(c)
    outs = [
        OutputIn(i0.seq, FINAL, "success", b"a", None, None, 0.1),
        OutputIn(i0.seq, FINAL, "failure", None, None, "e", 0.1),
    ]
    res = h.w(lambda tx: calls.put_outputs(tx, c[0], c[1], outs))
    assert (res.accepted, res.rejected) == (1, 1)
    assert [(s, bytes(d)) for _, _, s, d in h.outputs(call)] == [("success", b"a")]
    assert h.counters(fid) == (0, 0)


def test_get_outputs_by_cursor_returns_each_output_once(h: Any) -> None:
    fid = h.function(min_containers=1, max_containers=1)
    (c,) = h.containers(1)
    call = h.call(fid)
    h.put(call, range(3), total=3)
    i0, i1, i2 = h.lease(c, 3)

    def page(cursor: int, limit: int = 100) -> Any:
        return h.w(lambda tx: calls.get_outputs(tx, call, cursor, limit))

    empty = page(0)
    assert (empty.outputs, empty.cursor, empty.total, empty.done, empty.cancelled) == ([], 0, 3, 0, False)
    h.output(c, i1.seq, data=b"one")
    h.output(c, i0.seq, data=b"zero")
    first = page(0)
    assert [(o.idx, o.part, o.status, o.data) for o in first.outputs] == [
        (1, FINAL, "success", b"one"),
        (0, FINAL, "success", b"zero"),
    ]
    assert first.cursor == first.outputs[-1].id > 0 and first.done == 2
    again = page(first.cursor)
    assert (again.outputs, again.cursor) == ([], first.cursor)

    h.output(c, i2.seq, data=b"two")
    last = page(first.cursor)
    assert [o.idx for o in last.outputs] == [2] and last.cursor > first.cursor and last.done == 3

    # paging one at a time sees every output exactly once, in order
    seen, cursor = [], 0
    while (p := page(cursor, 1)).outputs:
        assert len(p.outputs) == 1
        seen.append(p.outputs[0].idx)
        cursor = p.cursor
    assert seen == [1, 0, 2]
    with pytest.raises(NotFound):
        h.w(lambda tx: calls.get_outputs(tx, "fc-missing", 0, 10))


def test_generator_items_are_stored_once_and_a_generator_that_yielded_is_not_retried(h: Any) -> None:
    fid = h.function(
        is_generator=True, retries=RetryPolicy(max_retries=3), min_containers=1, max_containers=1
    )
    (c,) = h.containers(1)
    call = h.call(fid, 1)
    (i0,) = h.lease(c)
    for part in (0, 1, 1):  # part 1 is sent twice (a retried request)
        assert h.output(c, i0.seq, data=f"item-{part}".encode(), part=part).accepted == 1
    assert h.one("SELECT items FROM inputs WHERE seq = ?", (i0.seq,)) == 2
    res = h.output(c, i0.seq, FAILURE, data=None)
    assert res.requeued_functions == set()
    assert [(p, s) for _, p, s, _ in h.outputs(call)] == [(0, "item"), (1, "item"), (FINAL, "failure")]
    assert h.counters(fid) == (0, 0)


# -- retries ----------------------------------------------------------------------------------------


def _fail(h: Any, ct: tuple[str, str], seq: int) -> tuple[Any, tuple[Any, ...], float]:
    """Report a user failure; return the result, the input's (state, attempt, not_before) and the time."""
    out = OutputIn(seq, FINAL, FAILURE.value, None, None, json.dumps({"type": "ValueError"}), 0.1)

    def op(tx: Any) -> tuple[Any, tuple[Any, ...], float]:
        res = calls.put_outputs(tx, ct[0], ct[1], [out])
        return res, tx.fetchone("SELECT state, attempt, not_before FROM inputs WHERE seq = ?", (seq,)), tx.now

    return h.w(op)  # type: ignore[no-any-return]


def _skip_backoff(h: Any, seq: int) -> None:
    h.w(lambda tx: tx.execute("UPDATE inputs SET not_before = 0 WHERE seq = ?", (seq,)))


def test_user_failures_retry_with_backoff_until_the_budget_is_spent(h: Any) -> None:
    policy = RetryPolicy(max_retries=2, backoff_coefficient=2.0, initial_delay=1.0)
    fid = h.function(retries=policy, min_containers=1, max_containers=1)
    (c,) = h.containers(1)
    call = h.call(fid, 1)
    for attempt, delay in ((1, 1.0), (2, 2.0)):
        (inp,) = h.lease(c)
        assert inp.attempt == attempt
        res, (state, next_attempt, not_before), now = _fail(h, c, inp.seq)
        assert res.accepted == 1 and res.requeued_functions == {fid}
        assert (state, next_attempt) == ("pending", attempt + 1)
        assert not_before == pytest.approx(now + delay) and not_before > now
        assert h.lease(c) == []  # not before the backoff has passed
        assert h.counters(fid) == (1, 0)
        assert h.outputs(call) == []
        _skip_backoff(h, inp.seq)

    (inp,) = h.lease(c)
    assert inp.attempt == 3
    res, (state, _, _), _ = _fail(h, c, inp.seq)
    assert res.accepted == 1 and res.requeued_functions == set() and state == "done"
    assert [(s, d) for _, _, s, d in h.outputs(call)] == [("failure", None)]
    assert h.counters(fid) == (0, 0)


def test_container_loss_requeues_without_spending_the_user_retry_budget(h: Any) -> None:
    fid = h.function(retries=RetryPolicy(max_retries=1), min_containers=1, max_containers=1)
    call = h.call(fid, 1)
    (c,) = h.containers(1)
    (inp,) = h.lease(c)
    assert h.stop(c[0]) == set()
    row = h.input_row(inp.seq)
    assert (row["state"], row["attempt"], row["sys_failures"], row["container_id"]) == ("pending", 2, 1, None)
    assert h.counters(fid) == (1, 0)

    (c2,) = h.containers(1)
    (inp,) = h.lease(c2)  # no backoff after a system failure
    assert inp.attempt == 2
    res, (state, _, _), _ = _fail(h, c2, inp.seq)
    assert res.requeued_functions == {fid} and state == "pending"  # the one user retry is still there
    _skip_backoff(h, inp.seq)
    (inp,) = h.lease(c2)
    res, (state, _, _), _ = _fail(h, c2, inp.seq)
    assert res.requeued_functions == set() and state == "done"
    assert [s for _, _, s, _ in h.outputs(call)] == ["failure"]


def test_too_many_system_failures_fail_the_input_with_status_system(h: Any) -> None:
    fid = h.function(min_containers=1, max_containers=1)
    call = h.call(fid, 1)
    for n in range(1, MAX_SYSTEM_FAILURES + 1):
        (c,) = h.containers(1)
        (inp,) = h.lease(c)
        assert inp.attempt == n
        assert h.stop(c[0]) == set()
        assert h.input_row(inp.seq)["sys_failures"] == n
        assert h.input_row(inp.seq)["state"] == "pending"
    (c,) = h.containers(1)
    h.lease(c)
    assert h.stop(c[0]) == {call}
    assert [(p, s) for _, p, s, _ in h.outputs(call)] == [(FINAL, "system")]
    error = json.loads(h.one("SELECT error FROM outputs WHERE call_id = ?", (call,)))
    assert error["type"] == "ContainerLost"
    assert h.counters(fid) == (0, 0)


# -- container stop ---------------------------------------------------------------------------------


def test_a_stopped_container_loses_its_lease(h: Any) -> None:
    fid = h.function(min_containers=1, max_containers=1)
    call = h.call(fid, 2)
    (c,) = h.containers(1)
    leased = h.lease(c, 2)
    assert h.w(lambda tx: containers.request_stop(tx, c[0], "test")) is True
    with pytest.raises(Gone):
        h.lease(c)  # a stopping container takes no new inputs
    h.w(lambda tx: containers.mark_stopped(tx, c[0], 137, "killed"))

    for inp in leased:
        with pytest.raises(Gone):  # the container learns that its lease is gone
            h.output(c, inp.seq)
    assert h.outputs(call) == []
    assert [h.input_row(i.seq)["state"] for i in leased] == ["pending", "pending"]
    assert h.counters(fid) == (2, 0)
    assert h.sql("SELECT state, exit_code FROM containers WHERE id = ?", (c[0],)) == [("stopped", 137)]
    assert h.sql("SELECT cpu_used, memory_used FROM workers") == [(0, 0)]
    with pytest.raises(Gone):
        h.lease(c)

    (c2,) = h.containers(1)
    assert [i.seq for i in h.lease(c2, 5)] == [i.seq for i in leased]


def test_a_stopped_container_holds_no_inputs(h: Any) -> None:
    fid = h.function(min_containers=1, max_containers=1)
    h.call(fid, 2)
    (c,) = h.containers(1)
    h.lease(c, 2)
    h.stop(c[0])
    assert h.w(lambda tx: containers.get_container(tx, c[0]))["inputs_held"] == 0


# -- cancellation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("terminate", [False, True])
def test_cancel_call_finishes_every_input_and_refuses_more(h: Any, terminate: bool) -> None:
    fid = h.function(min_containers=1, max_containers=1)
    call, other = h.call(fid, 3), h.call(fid, 1)
    (c,) = h.containers(1)
    (leased,) = h.lease(c)
    assert leased.call_id == call

    stop, interrupt = h.w(lambda tx: calls.cancel_call(tx, call, terminate))
    if terminate:
        assert (stop, interrupt) == ({c[0]}, {})
    else:
        assert (stop, interrupt) == (set(), {c[0]: [leased.seq]})
    outs = h.outputs(call)
    assert sorted((i, p, s) for i, p, s, _ in outs) == [(i, FINAL, "cancelled") for i in range(3)]
    assert h.counters(fid) == (1, 0)  # only the other call's input is left
    assert h.one("SELECT held FROM containers WHERE id = ?", (c[0],)) == 0
    with pytest.raises(Gone):
        h.put(call, [3])
    assert h.output(c, leased.seq).rejected == 1  # the interrupted input's late output
    page = h.w(lambda tx: calls.get_outputs(tx, call, 0, 100))
    assert page.cancelled and page.done == 3 and len(page.outputs) == 3
    assert [(i.call_id, i.idx) for i in h.lease(c, 5)] == [(other, 0)]


# -- lost lease responses ---------------------------------------------------------------------------


def test_release_unheld_requeues_leased_inputs_the_container_does_not_hold(h: Any) -> None:
    fid = h.function(min_containers=1, max_containers=1)
    h.call(fid, 3)
    (c,) = h.containers(1)
    i0, i1, i2 = h.lease(c, 3)
    assert h.w(lambda tx: calls.release_unheld(tx, c[0], "not-the-token", set())) == set()
    assert h.counters(fid) == (0, 3)

    assert h.w(lambda tx: calls.release_unheld(tx, c[0], c[1], {i0.seq})) == set()
    assert [h.input_row(i.seq)["state"] for i in (i0, i1, i2)] == ["leased", "pending", "pending"]
    assert h.input_row(i1.seq)["sys_failures"] == 1
    assert h.counters(fid) == (2, 1)
    assert h.one("SELECT held FROM containers WHERE id = ?", (c[0],)) == 1
    assert h.output(c, i0.seq).accepted == 1
    again = h.lease(c, 5)
    assert [(i.seq, i.attempt) for i in again] == [(i1.seq, 2), (i2.seq, 2)]


# -- timeouts ---------------------------------------------------------------------------------------


def test_expired_inputs_finds_leases_past_their_deadline(h: Any) -> None:
    fid = h.function(timeout=1.0, min_containers=1, max_containers=1)
    call = h.call(fid, 2)
    (c,) = h.containers(1)
    a, _ = h.lease(c, 2)
    leased_at, deadline = h.sql("SELECT leased_at, deadline FROM inputs WHERE seq = ?", (a.seq,))[0]
    assert deadline == pytest.approx(leased_at + 1.0)
    assert h.w(calls.expired_inputs) == []

    h.w(lambda tx: tx.execute("UPDATE inputs SET deadline = ? WHERE seq = ?", (tx.now - 10, a.seq)))
    assert h.w(calls.expired_inputs) == [(a.seq, c[0])]

    err = {"type": "FunctionTimeoutError", "message": "timed out"}
    assert h.w(lambda tx: calls.fail_input(tx, a.seq, OutputStatus.TIMEOUT, err, retryable=True)) == call
    assert [(i, s) for i, _, s, _ in h.outputs(call)] == [(0, "timeout")]
    assert h.w(calls.expired_inputs) == []
    assert h.counters(fid) == (0, 1)


# -- concurrency, variants, broken functions --------------------------------------------------------


def test_a_concurrent_container_fills_to_target_then_bursts_only_with_inputs_others_left(h: Any) -> None:
    fid = h.function(max_inputs=6, target_inputs=2)
    call = h.call(fid, n=5)
    a, b, _ = h.containers(3)  # ceil(5 / 2)
    assert len(h.lease(a, 6)) == 2  # target first: fresh inputs stay for the containers below it
    assert len(h.lease(a, 4)) == 0
    assert len(h.lease(b, 6)) == 2
    h.w(lambda tx: tx.execute("UPDATE inputs SET created_at = created_at - 1 WHERE call_id = ?", (call,)))
    assert len(h.lease(a, 4)) == 1  # nobody below target took it: a bursts towards max_inputs
    assert h.counters(fid) == (0, 5)


def test_variants_are_idempotent_by_content_and_retired_when_the_base_changes(h: Any) -> None:
    app_id = h.w(lambda tx: apps.create_app(tx, "v", "deployed", "test"))["app_id"]
    spec = FunctionSpec(
        name="M", module="m", qualname="M", is_class=True, methods={"f": {"is_generator": False}}
    )
    base, _ = h.w(lambda tx: apps.register_function(tx, app_id, spec, b"v1"))
    v1, vspec, _ = h.w(lambda tx: apps.register_variant(tx, base, {"size": 2}, {"cpu": 2.0}))
    assert h.w(lambda tx: apps.register_variant(tx, base, {"size": 2}, {"cpu": 2.0}))[0] == v1
    v2, _, _ = h.w(lambda tx: apps.register_variant(tx, base, {"size": 3}, {}))
    assert v2 != v1 and vspec.params == {"size": 2} and vspec.cpu == 2.0
    assert bytes(h.one("SELECT definition FROM functions WHERE id = ?", (v1,))) == b"v1"
    with pytest.raises(NotFound):
        h.w(lambda tx: apps.lookup_function(tx, "v", vspec.name))
    h.w(lambda tx: apps.register_function(tx, app_id, spec, b"v2"))  # redeployed
    assert h.sql("SELECT active FROM functions WHERE id IN (?, ?)", (v1, v2)) == [(0,), (0,)]
    again, _, _ = h.w(lambda tx: apps.register_variant(tx, base, {"size": 2}, {"cpu": 2.0}))
    assert again == v1 and h.one("SELECT active FROM functions WHERE id = ?", (v1,)) == 1
    assert bytes(h.one("SELECT definition FROM functions WHERE id = ?", (v1,))) == b"v2"


def test_a_function_whose_containers_cannot_start_keeps_no_warm_containers(h: Any) -> None:
    from vivace.server.services.containers import MAX_START_FAILURES
    from vivace.server.services.workers import ContainerEvent, container_event

    fid = h.function(min_containers=1)
    for _ in range(MAX_START_FAILURES):
        (ct,) = h.containers(1)
        # the runtime failed its import or @enter: it leased nothing as ready, then exited 1
        cid, token = ct
        assert h.w(lambda tx, c=cid, t=token: calls.lease_inputs(tx, c, t, 5, False)) == []
        h.w(lambda tx, c=cid: container_event(tx, h.worker(), ContainerEvent(c, "exited", 1, "exited")))
    assert h.containers() == []  # min_containers is not kept up for a broken function
    h.call(fid, n=1)
    assert len(h.containers()) == 1  # a new input still gets a container (to fail it with the traceback)


def test_a_deep_backlog_waits_on_a_bounded_number_of_unplaced_containers(h: Any) -> None:
    from vivace.server.services.containers import MAX_UNPLACED

    fid = h.function()  # no max_containers: the backlog alone decides how many it wants
    h.call(fid, n=MAX_UNPLACED + 40)
    first = h.w(containers.autoscale)
    assert len(first.created) == MAX_UNPLACED and first.capped
    # none placed yet (no worker): no more rows, however deep the queue
    again = h.w(containers.autoscale)
    assert again.created == [] and again.capped
    live = "SELECT COUNT(*) FROM containers WHERE function_id = ? AND state = 'pending'"
    assert h.one(live, (fid,)) == MAX_UNPLACED
    h.worker()  # room for all of them (64 cores, 0.125 each)
    assert len(h.w(containers.schedule)) == MAX_UNPLACED
    rest = h.w(containers.autoscale)
    assert len(rest.created) == 40 and not rest.capped
