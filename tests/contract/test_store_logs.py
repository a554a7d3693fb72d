"""Contract: logs (issue 10) on both stores: each line keeps its container, input and call; filters by
function, call, time, text and stream; the platform's lines about containers and retries; retention."""

from __future__ import annotations

from typing import Any

from vivace.protocol.calls import OutputStatus
from vivace.protocol.functions import RetryPolicy
from vivace.server.services import calls, logs
from vivace.server.services.logs import LogFilter
from vivace.server.services.workers import ContainerEvent, container_event


def lines(h: Any, **kw: Any) -> list[dict[str, Any]]:
    return h.w(lambda tx: logs.read(tx, LogFilter(**kw), cursor=0, limit=1000))  # type: ignore[no-any-return]


def test_a_line_keeps_its_input_and_call_and_filters_find_it(h: Any) -> None:
    f, g = h.function("f", max_containers=1), h.function("g")
    app_f = h.one("SELECT app_id FROM functions WHERE id = ?", (f,))
    call = h.call(f, n=2)
    (ct,) = h.containers(1)
    (a,) = h.lease(ct)
    h.w(lambda tx: logs.append(tx, [
        {"app_id": app_f, "function_id": f, "container_id": ct[0], "input_seq": a.seq, "stream": "stdout",
         "line": "50% done_now", "ts": 1000.0},
        {"app_id": app_f, "function_id": f, "container_id": ct[0], "stream": "stderr", "line": "warming",
         "ts": 2000.0},
    ]))  # fmt: skip
    (mine,) = lines(h, app_id=app_f, call_id=call)
    assert (mine["line"], mine["input_seq"], mine["call_id"], mine["container_id"]) == (
        "50% done_now",
        a.seq,
        call,
        ct[0],
    )
    # text is matched literally: % and _ are not wildcards
    assert [r["line"] for r in lines(h, app_id=app_f, text="50% done_")] == ["50% done_now"]
    assert lines(h, app_id=app_f, text="50%_done") == []
    assert [r["line"] for r in lines(h, app_id=app_f, streams=("stderr",))] == ["warming"]
    assert [r["line"] for r in lines(h, app_id=app_f, since=1500.0, until=3000.0)] == ["warming"]
    assert [r["line"] for r in lines(h, app_id=app_f, until=1500.0)] == ["50% done_now"]
    assert lines(h, app_id=app_f, function_ids=(g,)) == [] and lines(h, app_id=app_f, function_ids=()) == []
    assert len(lines(h, app_id=app_f, function_ids=(f, g), streams=("stdout", "stderr"))) == 2


def test_the_platform_says_when_a_container_is_up_ready_and_stopped(h: Any) -> None:
    wid = h.worker()
    fid = h.function(min_containers=1)
    ((cid, tok),) = h.containers(1)
    ev = ContainerEvent(cid, "started", image_s=0.25)
    h.w(lambda tx: container_event(tx, wid, ev))
    h.w(lambda tx: container_event(tx, wid, ev))  # replayed: said once
    h.w(lambda tx: calls.lease_inputs(tx, cid, tok, 1))  # asks for work: ready
    h.w(lambda tx: container_event(tx, wid, ContainerEvent(cid, "exited", 0, "stopped: scaled down")))
    said = [r["line"] for r in lines(h, container_id=cid, streams=("platform",))]
    assert len(said) == 3, said
    assert (
        said[0].startswith(f"container {cid} up on worker w1 ")
        and "(placed " in said[0]
        and "image " in said[0]
    )
    assert said[1].startswith(f"container {cid} ready ") and "@enter" in said[1]
    assert said[2].startswith(f"container {cid} stopped after ") and said[2].endswith("stopped: scaled down")
    assert all(r["function_id"] == fid for r in lines(h, container_id=cid))


def test_a_retried_input_is_in_the_logs_with_why(h: Any) -> None:
    fid = h.function(retries=RetryPolicy(max_retries=2, initial_delay=1.0, backoff_coefficient=1.0))
    call = h.call(fid, n=1)
    (ct,) = h.containers(1)
    (a,) = h.lease(ct)
    h.output(ct, a.seq, OutputStatus.FAILURE)  # a user error: retried after 1 s, counted
    h.stop(ct[0], "worker lost")
    (line,) = lines(h, call_id=call, streams=("system",))
    assert line["line"] == f"input 0 of call {call} runs again in 1.0 s (attempt 2): it failed (failure)"
    assert line["input_seq"] == a.seq
    # a container lost under an input: retried at once, not counted against the user's retries
    h.w(lambda tx: tx.execute("UPDATE inputs SET not_before = 0"))
    (ct2,) = h.containers(1)
    assert len(h.lease(ct2)) == 1
    h.stop(ct2[0], "worker lost")
    said = [r["line"] for r in lines(h, call_id=call, streams=("system",))]
    assert said[-1].startswith(f"input 0 of call {call} runs again (attempt 3): container {ct2[0]} stopped")
    assert said[-1].endswith("not counted against its retries")


def test_retention_deletes_old_lines_in_batches(h: Any, monkeypatch: Any) -> None:
    fid = h.function()
    app_id = h.one("SELECT app_id FROM functions WHERE id = ?", (fid,))
    old = [{"app_id": app_id, "line": f"old {i}", "ts": 100.0 + i} for i in range(7)]
    h.w(lambda tx: logs.append(tx, [*old, {"app_id": app_id, "line": "new", "ts": 5000.0}]))
    h.w(lambda tx: tx.execute("INSERT INTO build_logs (image_id, ts, line) VALUES ('im-1', 50.0, 'built')"))
    monkeypatch.setattr(logs, "DELETE_BATCH", 3)
    assert h.w(lambda tx: logs.expire(tx, 1000.0)) == 4  # 3 container lines and 1 build line
    assert h.w(lambda tx: logs.expire(tx, 1000.0)) == 3
    assert h.w(lambda tx: logs.expire(tx, 1000.0)) == 1
    assert h.w(lambda tx: logs.expire(tx, 1000.0)) == 0
    assert [r["line"] for r in lines(h, app_id=app_id)] == ["new"]
    assert h.one("SELECT COUNT(*) FROM build_logs") == 0
