"""The hot path: create calls, upload inputs, lease inputs to containers, deliver outputs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vivace.protocol import ids
from vivace.protocol.calls import FINAL, CallKind, OutputStatus
from vivace.server.api.common import (
    USERS,
    allow_call,
    allow_function,
    check_worker,
    field,
    frame_body,
    frame_response,
    json_body,
    plane_of,
    query_float,
    query_int,
    route,
)
from vivace.server.errors import Forbidden, Invalid
from vivace.server.services import calls, workers
from vivace.server.services.calls import OutputIn

MAX_BATCH = 5000
MAX_EXACT = 1000  # inputs one concurrent or batched container may lease at once
RETRY_RECHECK = 0.25  # seconds between lease attempts while queued inputs wait out a retry delay
_STATUSES = {s.value for s in OutputStatus}


@route(kinds=USERS)
async def create_call(request: Request) -> Response:
    body = await json_body(request)
    call_id = field(body, "call_id", str)
    function_id = field(body, "function_id", str)
    await allow_function(request, function_id)
    kind = field(body, "kind", str, CallKind.REMOTE.value)
    if not ids.is_id(call_id, ids.FUNCTION_CALL):
        raise Invalid("call_id must look like fc-<hex>")
    if kind not in {k.value for k in CallKind}:
        raise Invalid(f"kind must be one of {sorted(k.value for k in CallKind)}")
    plane = plane_of(request)
    created = await plane.store.write(lambda tx: calls.create_call(tx, call_id, function_id, kind))
    return JSONResponse({"call_id": call_id, "created": created})


@route(kinds=USERS)
async def put_inputs(request: Request) -> Response:
    """Frames: header ``{"idx": [..], "total": n|null}``; one payload per input."""
    call_id = request.path_params["call_id"]
    header, blobs = await frame_body(request)
    idxs = header.get("idx")
    if (
        not isinstance(idxs, list)
        or len(idxs) != len(blobs)
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idxs)
    ):
        raise Invalid("header 'idx' must list one non-negative index per payload")
    if len(idxs) > MAX_BATCH:
        raise Invalid(f"at most {MAX_BATCH} inputs per request")
    total = header.get("total")
    if total is not None and (not isinstance(total, int) or total < 0):
        raise Invalid("'total' must be a non-negative integer")
    plane = plane_of(request)
    items = []
    for i, blob in zip(idxs, blobs, strict=True):
        data, ref = plane.stash(blob)
        items.append((i, data, ref))
    create_for = header.get("function_id")
    kind = header.get("kind", CallKind.REMOTE.value)
    if create_for is not None and (
        not isinstance(create_for, str) or kind not in {k.value for k in CallKind}
    ):
        raise Invalid("'function_id' must be a string and 'kind' a known call kind")
    if create_for is not None and not ids.is_id(call_id, ids.FUNCTION_CALL):
        raise Invalid("call ids look like fc-<hex>")
    if create_for is not None:
        await allow_function(request, create_for)
    await allow_call(request, call_id)

    def op(tx: Any) -> tuple[str, int]:
        if create_for is not None:
            calls.create_call(tx, call_id, create_for, kind)
        return calls.put_inputs(tx, call_id, items, total)

    function_id, added = await plane.store.write(op)
    if added:
        plane.inputs_changed(function_id)
    wait = header.get("await_outputs")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 0 < wait <= 60:
        # a single call can wait for its result in the same request: one round trip fewer
        return await _outputs_response(plane, call_id, 0, float(wait), 1000)
    return JSONResponse({"added": added})


@route(kinds=USERS)
async def get_outputs(request: Request) -> Response:
    call_id = request.path_params["call_id"]
    await allow_call(request, call_id)
    cursor = query_int(request, "cursor", 0, 0, 2**62)
    wait = query_float(request, "wait", 0.0, 0.0, 60.0)
    limit = query_int(request, "limit", 1000, 1, 10_000)
    return await _outputs_response(plane_of(request), call_id, cursor, wait, limit)


async def _outputs_response(plane: Any, call_id: str, cursor: int, wait: float, limit: int) -> Response:
    """Long-poll the outputs after ``cursor``; answer as soon as there is one (or the call is done)."""
    deadline = time.monotonic() + wait
    while True:
        ev = plane.notifier.event(f"outputs:{call_id}")
        page = await plane.store.read(lambda tx: calls.get_outputs(tx, call_id, cursor, limit))
        finished = page.total is not None and page.done >= page.total
        remaining = deadline - time.monotonic()
        if page.outputs or finished or remaining <= 0:
            break
        await plane.notifier.wait(ev, remaining)
    blobs: list[bytes] = []
    outs = []
    for o in page.outputs:
        item: dict[str, Any] = {"idx": o.idx, "part": o.part, "status": o.status, "error": o.error}
        if o.data is not None or o.data_ref is not None:
            item["blob"] = len(blobs)
            blobs.append(plane.unstash(o.data, o.data_ref))
        outs.append(item)
    header = {
        "cursor": page.cursor,
        "total": page.total,
        "done": page.done,
        "cancelled": page.cancelled,
        "outputs": outs,
    }
    return frame_response(header, blobs)


@route(kinds=USERS)
async def cancel_call(request: Request) -> Response:
    call_id = request.path_params["call_id"]
    await allow_call(request, call_id)
    body = await json_body(request)
    terminate = field(body, "terminate_containers", bool, False)
    stop = await plane_of(request).cancel_call(call_id, terminate)
    return JSONResponse({"cancelled": True, "containers_stopped": sorted(stop)})


@route(kinds=("worker",))
async def exchange(request: Request) -> Response:
    """A container (through its worker) hands in outputs and asks for its next inputs."""
    worker_id = request.path_params["worker_id"]
    container_id = request.path_params["container_id"]
    header, blobs = await frame_body(request)
    plane = plane_of(request)
    token = header.get("token")
    if not isinstance(token, str):
        raise Invalid("missing lease token")
    info = plane.container_cache.get(container_id)
    if info is None:
        wid, _ = await plane.store.read(lambda tx: workers.worker_of(tx, container_id))
        fid = await plane.store.read(
            lambda tx: tx.scalar("SELECT function_id FROM containers WHERE id = ?", (container_id,))
        )
        info = (str(fid), str(wid), "")
        plane.container_cache[container_id] = info
    function_id, owner, _ = info
    if owner != worker_id:
        raise Forbidden(f"container {container_id} does not belong to worker {worker_id}")
    await check_worker(request, worker_id)
    outputs = _parse_outputs(header.get("outputs", []), blobs, plane)
    held = header.get("held")
    rejected = 0
    if outputs:
        for o in outputs:
            if o.duration is not None and o.part == FINAL:
                plane.note_duration(function_id, o.duration)
        res = await plane.store.write(lambda tx: calls.put_outputs(tx, container_id, token, outputs))
        rejected = res.rejected
        plane.outputs_changed(res.calls)
        if res.requeued_functions:
            plane.inputs_changed(*res.requeued_functions)
        plane.notifier.wake("autoscale")
    if header.get("retry") is True and isinstance(held, list):
        held_set = {int(h) for h in held if isinstance(h, int)}
        lost = await plane.store.write(lambda tx: calls.release_unheld(tx, container_id, token, held_set))
        if lost:
            plane.requeued(lost)
    want = header.get("want", 0)
    wait = header.get("wait", 0.0)
    if not isinstance(want, int) or not isinstance(wait, (int, float)) or want < 0 or not 0 <= wait <= 60:
        raise Invalid("'want' must be a non-negative integer and 'wait' between 0 and 60 seconds")
    # several inputs per lease only for short inputs, so that a batch runs in about 250 ms: slow inputs
    # stay spread over containers and a batch never eats into an input's timeout
    avg = plane.fast_functions.get(function_id, 1.0)
    limit = min(want, 64, max(1, int(0.25 / max(avg, 1e-4))))
    if header.get("exact") is True:  # a concurrent or batched container asks for exactly its free slots
        limit = min(want, MAX_EXACT)
    ready = header.get("init_failed") is not True  # a container failing its inputs never became ready
    leased: list[calls.LeasedInput] = []
    deadline = time.monotonic() + float(wait)
    while limit > 0:
        ev = plane.notifier.event(f"inputs:{function_id}")
        backlog = await plane.store.read(
            lambda tx: tx.scalar("SELECT backlog FROM functions WHERE id = ?", (function_id,))
        )
        if container_id in plane.ready_containers and not backlog:
            leased = []  # nothing queued: skip the write (a commit is the costliest step here)
        else:
            leased = await plane.store.write(
                lambda tx: calls.lease_inputs(tx, container_id, token, limit, ready)
            )
            plane.ready_containers.add(container_id)
        remaining = deadline - time.monotonic()
        if leased or remaining <= 0:
            break
        # queued inputs that could not be leased wait out a retry delay: look again soon
        await plane.notifier.wait(ev, min(remaining, RETRY_RECHECK) if backlog else remaining)
    items: list[dict[str, Any]] = []
    out_blobs: list[bytes] = []
    for li in leased:
        items.append(
            {"seq": li.seq, "call": li.call_id, "idx": li.idx, "attempt": li.attempt, "blob": len(out_blobs)}
        )
        out_blobs.append(
            await asyncio.to_thread(plane.unstash, li.args, li.args_ref) if li.args_ref else li.args or b""
        )
    cancel = sorted(plane.cancel_requests.pop(container_id, set()))
    return frame_response({"inputs": items, "rejected": rejected, "cancel": cancel}, out_blobs)


def _parse_outputs(raw: Any, blobs: list[bytes], plane: Any) -> list[OutputIn]:
    if not isinstance(raw, list):
        raise Invalid("'outputs' must be a list")
    out = []
    for o in raw:
        if not isinstance(o, dict):
            raise Invalid("each output must be an object")
        seq, part, status = o.get("seq"), o.get("part", FINAL), o.get("status")
        if not isinstance(seq, int) or not isinstance(part, int) or status not in _STATUSES | {"item"}:
            raise Invalid("output needs an integer 'seq', integer 'part' and a known 'status'")
        bi = o.get("blob")
        data, ref = None, None
        if bi is not None:
            if not isinstance(bi, int) or not 0 <= bi < len(blobs):
                raise Invalid("output 'blob' index out of range")
            data, ref = plane.stash(blobs[bi])
        err = o.get("error")
        dur = o.get("duration")
        out.append(
            OutputIn(
                seq,
                part,
                status,
                data,
                ref,
                err if isinstance(err, str) else None,
                float(dur) if isinstance(dur, (int, float)) else None,
            )
        )
    return out


@route()
async def list_calls(request: Request) -> Response:
    """Recent calls, newest first (``app``: a name or id; ``before``: epoch seconds; ``limit`` up to 500)."""
    from vivace.server.services import metering

    limit = query_int(request, "limit", 100, 1, 500)
    before = query_float(request, "before", 0.0, 0.0, 1e11) if "before" in request.query_params else None
    app = request.query_params.get("app") or None
    rows = await plane_of(request).store.read(
        lambda tx: metering.list_calls(tx, app=app, limit=limit, before=before)
    )
    return JSONResponse({"calls": rows})
