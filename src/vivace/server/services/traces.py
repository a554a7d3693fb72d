"""OpenTelemetry spans of each call's life and each container's start, as OTLP/JSON (``/v1/traces``).

A call is one trace (its id derived from the call id): the root span runs from the call to its last
output, with a span per input from its arrival to its output, and inside it ``queued`` (to its lease)
and ``run`` (in its container). A container's start is a trace of its own with a span per phase. Spans
are made from the rows once a call has all its outputs (or a container is ready), read after a cursor,
so each is exported once per control-plane lifetime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from vivace._version import __version__
from vivace.protocol.calls import FINAL
from vivace.server.store.base import Tx

MAX_CALLS = 200  # calls per export batch
MAX_INPUTS = 1000  # input spans per call (a larger map gets its first ones and a count)
KIND_INTERNAL, KIND_SERVER = 1, 2
STATUS_OK, STATUS_ERROR = 1, 2


@dataclass
class Cursor:
    output_id: int
    ready_at: float


def start(tx: Tx) -> Cursor:
    return Cursor(int(tx.scalar("SELECT MAX(id) FROM outputs") or 0), tx.now)


def _id(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[: 2 * n]


def _ns(t: float) -> str:
    return str(int(t * 1e9))


def _attrs(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool):
            val: dict[str, Any] = {"boolValue": v}
        elif isinstance(v, int):
            val = {"intValue": str(v)}
        elif isinstance(v, float):
            val = {"doubleValue": v}
        else:
            val = {"stringValue": str(v)}
        out.append({"key": k, "value": val})
    return out


def _span(trace: str, span: str, parent: str | None, name: str, begin: float, end: float,
          attrs: dict[str, Any], error: str | None = None, kind: int = KIND_INTERNAL) -> dict[str, Any]:  # fmt: skip
    s: dict[str, Any] = {
        "traceId": trace, "spanId": span, "name": name, "kind": kind,
        "startTimeUnixNano": _ns(begin), "endTimeUnixNano": _ns(max(begin, end)), "attributes": _attrs(attrs),
        "status": {"code": STATUS_ERROR, "message": error[:500]} if error else {"code": STATUS_OK},
    }  # fmt: skip
    if parent:
        s["parentSpanId"] = parent
    return s


def collect(tx: Tx, cur: Cursor) -> tuple[list[dict[str, Any]], Cursor]:
    """Spans of the calls finished and containers ready since ``cur``; the cursor after them."""
    spans: list[dict[str, Any]] = []
    rows = tx.fetchall(
        "SELECT o.id, o.call_id FROM outputs o WHERE o.id > ? AND o.part = ? ORDER BY o.id LIMIT ?",
        (cur.output_id, FINAL, MAX_CALLS * 10),
    )
    seen: list[str] = []
    last = cur.output_id
    for oid, call_id in rows:
        last = int(oid)
        if call_id not in seen:
            seen.append(call_id)
        if len(seen) >= MAX_CALLS:
            break
    for call_id in seen:
        spans += _call_spans(tx, call_id)
    ready = tx.fetchall(
        "SELECT c.id, c.app_id, f.name, c.created_at, c.assigned_at, c.image_ready_at, c.started_at, c.ready_at, "
        "c.worker_id, c.pool FROM containers c JOIN functions f ON f.id = c.function_id "
        "WHERE c.ready_at > ? ORDER BY c.ready_at LIMIT ?",
        (cur.ready_at, MAX_CALLS),
    )
    ready_at = cur.ready_at
    for row in ready:
        ready_at = max(ready_at, float(row[7]))
        spans += _container_spans(row)
    return spans, Cursor(last, ready_at)


def _call_spans(tx: Tx, call_id: str) -> list[dict[str, Any]]:
    row = tx.fetchone(
        "SELECT c.created_at, c.kind, c.inputs_total, c.inputs_added, c.outputs_done, c.cost, c.busy_s, f.name, "
        "COALESCE(a.name, a.id), c.cancelled FROM calls c JOIN functions f ON f.id = c.function_id "
        "JOIN apps a ON a.id = f.app_id WHERE c.id = ?",
        (call_id,),
    )
    if row is None:
        return []
    created, kind, total, added, done, cost, busy, fn, app, cancelled = row
    expected = int(total if total is not None else added)
    if total is None or int(done) < expected:
        return []  # not finished: its trace goes out with its last output
    inputs = tx.fetchall(
        "SELECT i.idx, i.created_at, i.leased_at, i.attempt, o.status, o.duration, o.created_at, o.error "
        "FROM inputs i JOIN outputs o ON o.call_id = i.call_id AND o.idx = i.idx AND o.part = ? "
        "WHERE i.call_id = ? ORDER BY i.idx LIMIT ?",
        (FINAL, call_id, MAX_INPUTS),
    )
    trace, root = _id(call_id, 16), _id(call_id + "/root", 8)
    end = max([float(r[6]) for r in inputs] or [float(created)])
    failures = sum(1 for r in inputs if r[4] != "success")
    spans = [
        _span(trace, root, None, f"call {app}.{fn}", float(created), end, {
            "vivace.call.id": call_id, "vivace.app": app, "vivace.function": fn, "vivace.call.kind": kind,
            "vivace.inputs": expected, "vivace.failures": failures, "vivace.cost": float(cost),
            "vivace.busy_s": float(busy), "vivace.cancelled": bool(cancelled),
            "vivace.inputs.traced": len(inputs),
        }, f"{failures} of {expected} inputs failed" if failures else None,
            KIND_SERVER if kind == "web" else KIND_INTERNAL),
    ]  # fmt: skip
    for idx, arrived, leased, attempt, status, duration, out_at, error in inputs:
        span = _id(f"{call_id}/{idx}", 8)
        err = _error(error) if status != "success" else None
        spans.append(_span(trace, span, root, f"input {idx}", float(arrived), float(out_at),
                           {"vivace.input.index": int(idx), "vivace.input.attempts": int(attempt),
                            "vivace.input.status": status}, err))  # fmt: skip
        run_start = float(out_at) - float(duration) if duration is not None else None
        if leased is not None:
            queued_end = min(float(leased), run_start) if run_start is not None else float(leased)
            spans.append(
                _span(trace, _id(f"{call_id}/{idx}/q", 8), span, "queued", float(arrived), queued_end, {})
            )
        if run_start is not None:
            spans.append(
                _span(trace, _id(f"{call_id}/{idx}/r", 8), span, "run", run_start, float(out_at), {}, err)
            )
    return spans


def _error(raw: Any) -> str:
    try:
        e = json.loads(raw or "")
        return f"{e.get('type', 'Error')}: {e.get('message', '')}"
    except (ValueError, AttributeError):
        return str(raw or "failed")


PHASES = (("placement", 3, 4), ("image", 4, 5), ("start", 5, 6), ("enter", 6, 7))


def _container_spans(row: Any) -> list[dict[str, Any]]:
    cid, app_id, fn, created, *_rest = row
    worker, pool = row[8], row[9]
    trace, root = _id(cid, 16), _id(cid + "/start", 8)
    spans = [_span(trace, root, None, f"container start {fn}", float(created), float(row[7]), {
        "vivace.container.id": cid, "vivace.app.id": app_id, "vivace.function": fn, "vivace.worker.id": worker,
        "vivace.pool": pool})]  # fmt: skip
    for name, a, b in PHASES:
        if row[a] is not None and row[b] is not None:
            spans.append(_span(trace, _id(f"{cid}/{name}", 8), root, name, float(row[a]), float(row[b]), {}))
    return spans


def payload(spans: list[dict[str, Any]], service: str) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attrs({"service.name": service, "service.version": __version__})},
                "scopeSpans": [{"scope": {"name": "vivace", "version": __version__}, "spans": spans}],
            }
        ]
    }
