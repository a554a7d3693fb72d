"""Contract: the spans of calls and container starts (OpenTelemetry, OTLP/JSON) on both stores."""

from __future__ import annotations

from typing import Any

from vivace.protocol.calls import OutputStatus
from vivace.server.services import traces
from vivace.server.services.workers import ContainerEvent, container_event


def by_name(spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        out.setdefault(s["name"], []).append(s)
    return out


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


def test_a_finished_call_is_one_trace_of_its_inputs_queue_and_run(h: Any) -> None:
    wid = h.worker()
    fid = h.function("f", max_containers=1, max_inputs=2, target_inputs=2)
    cur = h.w(traces.start)
    call = h.call(fid)
    h.put(call, [0, 1], total=2)  # all its inputs are in: it finishes with its last output
    (ct,) = h.containers(1)
    h.w(lambda tx: container_event(tx, wid, ContainerEvent(ct[0], "started", image_s=0.1)))
    a, b = h.lease(ct, 2)
    h.output(ct, a.seq)
    spans, cur2 = h.w(lambda tx: traces.collect(tx, cur))
    names = by_name(spans)
    assert not any(n.startswith("call ") for n in names)  # one input still runs: no call span yet
    assert len(names["container start f"]) == 1 and {"placement", "image", "start", "enter"} <= set(names)
    h.output(ct, b.seq, OutputStatus.FAILURE)
    spans, cur3 = h.w(lambda tx: traces.collect(tx, cur2))
    names = by_name(spans)
    (root,) = names["call " + h.one("SELECT app_id FROM functions WHERE id = ?", (fid,)) + ".f"]
    assert "parentSpanId" not in root and root["status"]["code"] == traces.STATUS_ERROR
    assert attrs(root)["vivace.call.id"] == call and attrs(root)["vivace.failures"] == "1"
    inputs = names["input 0"] + names["input 1"]
    assert {s["parentSpanId"] for s in inputs} == {root["spanId"]}
    assert all(s["traceId"] == root["traceId"] for s in spans if s["name"] != "container start f")
    runs, queued = names["run"], names["queued"]
    assert len(runs) == 2 and len(queued) == 2
    assert {s["parentSpanId"] for s in runs} == {s["spanId"] for s in inputs}
    for s in spans:
        assert int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"])
    # exported once: the next collection has nothing
    again, _ = h.w(lambda tx: traces.collect(tx, cur3))
    assert again == []
    body = traces.payload(spans, "svc")
    (rs,) = body["resourceSpans"]
    assert {"key": "service.name", "value": {"stringValue": "svc"}} in rs["resource"]["attributes"]
    assert rs["scopeSpans"][0]["spans"] == spans
