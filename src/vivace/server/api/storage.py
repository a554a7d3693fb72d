"""Dict and Queue over HTTP: objects by name or ephemeral, and their contents as binary frames.

Keys, values and items travel as the client's pickles in frames (``protocol/frames.py``); the server
never unpickles them. A container reaches these routes through its worker, with its app's scope.
``Queue`` gets long-poll: a put wakes the waiters of its queue (``queue:<id>``) at once.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vivace.protocol import ids
from vivace.protocol import objects as limits
from vivace.server.api.common import USERS, field, frame_body, frame_response, json_body, plane_of, route
from vivace.server.errors import ApiError, Forbidden, Invalid
from vivace.server.services import storage

MAX_WAIT = 60.0
"""Seconds one blocking get waits at most; the client asks again for longer timeouts."""


def _kind(request: Request) -> str:
    kind = str(request.path_params["kind"])
    if kind not in storage.KINDS:
        raise Invalid(f"unknown object kind {kind!r}; one of {', '.join(storage.KINDS)}")
    return kind


def _not_secret(kind_or_id: str) -> None:
    """A secret is never made here without values, nor ephemeral: it has routes of its own."""
    if kind_or_id == "secret" or kind_or_id.startswith(f"{ids.SECRET}-"):
        raise ApiError(
            "secrets are created with their values through /v1/secrets (Secret.objects.create, "
            "`vivace secret create`), and are never ephemeral",
            code="secret_route",
        )


@route(kinds=USERS)
async def lookup_object(request: Request) -> Response:
    kind = _kind(request)
    body = await json_body(request)
    name = field(body, "name", str)
    create = field(body, "create_if_missing", bool, False)
    if create:
        _not_secret(kind)
    oid, created = await plane_of(request).store.write(lambda tx: storage.lookup(tx, kind, name, create))
    return JSONResponse({"object_id": oid, "created": created})


@route(kinds=USERS)
async def create_object(request: Request) -> Response:
    kind = _kind(request)
    _not_secret(kind)
    name = field(await json_body(request), "name", str)
    oid = await plane_of(request).store.write(lambda tx: storage.create(tx, kind, name))
    return JSONResponse({"object_id": oid, "created": True})


@route(kinds=USERS)
async def create_ephemeral(request: Request) -> Response:
    kind = _kind(request)
    _not_secret(kind)
    oid = await plane_of(request).store.write(lambda tx: storage.create_ephemeral(tx, kind))
    return JSONResponse({"object_id": oid})


@route(kinds=USERS)
async def heartbeat_object(request: Request) -> Response:
    oid = request.path_params["object_id"]
    _not_secret(oid)
    await plane_of(request).store.write(lambda tx: storage.heartbeat(tx, oid))
    return JSONResponse({"ok": True})


@route(kinds=USERS)
async def delete_ephemeral(request: Request) -> Response:
    oid = request.path_params["object_id"]
    _not_secret(oid)
    await plane_of(request).store.write(lambda tx: storage.delete_ephemeral(tx, oid))
    return JSONResponse({"object_id": oid})


@route(kinds=USERS)
async def list_objects(request: Request) -> Response:
    kind = _kind(request)
    rows = await plane_of(request).store.read(lambda tx: storage.list_named(tx, kind))
    return JSONResponse({"objects": [{"name": n, "object_id": i, "created_at": c} for n, i, c in rows]})


@route(kinds=USERS)
async def delete_object(request: Request) -> Response:
    kind, name = _kind(request), request.path_params["name"]
    if kind == "secret" and getattr(request.state, "token_kind", None) == "container":
        raise Forbidden("containers may not delete secrets")
    oid = await plane_of(request).store.write(lambda tx: storage.delete(tx, kind, name))
    return JSONResponse({"object_id": oid})


# -- Dict -------------------------------------------------------------------------------------------
async def _dict_op(request: Request) -> tuple[str, dict[str, Any], list[bytes]]:
    header, blobs = await frame_body(request)
    return request.path_params["object_id"], header, blobs


@route(kinds=USERS)
async def dict_put(request: Request) -> Response:
    did, header, blobs = await _dict_op(request)
    if len(blobs) % 2 or not blobs:
        raise Invalid("a put carries key and value frames in pairs")
    if len(blobs) // 2 > limits.MAX_BATCH:
        raise Invalid(f"{len(blobs) // 2:,} entries in one put; the limit is {limits.MAX_BATCH:,}")
    skip = field(header, "skip_if_exists", bool, False)
    pairs = list(zip(blobs[::2], blobs[1::2], strict=True))
    written = await plane_of(request).store.write(lambda tx: storage.dict_put(tx, did, pairs, skip))
    return JSONResponse({"written": written})


@route(kinds=USERS)
async def dict_get(request: Request) -> Response:
    did, header, blobs = await _dict_op(request)
    key = _one(blobs)
    pop = field(header, "pop", bool, False)
    op = storage.dict_pop if pop else storage.dict_get
    value = await plane_of(request).store.write(lambda tx: op(tx, did, key))
    return frame_response({"found": value is not None}, [] if value is None else [value])


@route(kinds=USERS)
async def dict_len(request: Request) -> Response:
    did = request.path_params["object_id"]
    n = await plane_of(request).store.read(lambda tx: storage.dict_len(tx, did))
    return JSONResponse({"len": n})


@route(kinds=USERS)
async def dict_items(request: Request) -> Response:
    did, header, _ = await _dict_op(request)
    after = field(header, "after", str, "")
    limit = field(header, "limit", int, 1000)
    page = await plane_of(request).store.read(lambda tx: storage.dict_items(tx, did, after, limit))
    blobs = [b for _, k, v in page for b in (k, v)]
    return frame_response({"cursor": page[-1][0] if page else None, "n": len(page)}, blobs)


@route(kinds=USERS)
async def dict_clear(request: Request) -> Response:
    did = request.path_params["object_id"]
    n = await plane_of(request).store.write(lambda tx: storage.dict_clear(tx, did))
    return JSONResponse({"removed": n})


def _one(blobs: list[bytes]) -> bytes:
    if len(blobs) != 1:
        raise Invalid(f"expected one key frame, got {len(blobs)}")
    return blobs[0]


# -- Queue ------------------------------------------------------------------------------------------
@route(kinds=USERS)
async def queue_put(request: Request) -> Response:
    qid = request.path_params["object_id"]
    header, blobs = await frame_body(request)
    partition = field(header, "partition", str, None, optional=True)
    ttl = field(header, "partition_ttl", (int, float), limits.DEFAULT_PARTITION_TTL)
    plane = plane_of(request)
    added = await plane.store.write(lambda tx: storage.queue_put(tx, qid, blobs, partition, float(ttl)))
    plane.notifier.wake(f"queue:{qid}")
    return JSONResponse({"added": added})


@route(kinds=USERS)
async def queue_get(request: Request) -> Response:
    """Up to ``n`` items; with ``wait`` seconds, answers as soon as one arrives (or when time is up)."""
    qid = request.path_params["object_id"]
    body = await json_body(request)
    n = field(body, "n", int, 1)
    partition = field(body, "partition", str, None, optional=True)
    wait = float(field(body, "wait", (int, float), 0.0))
    if not 0 <= wait <= MAX_WAIT:
        raise Invalid(f"wait must be within 0..{MAX_WAIT:g} seconds")
    peek = field(body, "peek", bool, False)
    plane = plane_of(request)
    op = storage.queue_peek if peek else storage.queue_get
    deadline = time.monotonic() + wait
    while True:
        ev = plane.notifier.event(f"queue:{qid}")  # taken before the check: no put slips between
        items = await plane.store.write(lambda tx: op(tx, qid, n, partition))
        remaining = deadline - time.monotonic()
        if items or remaining <= 0 or peek:
            return frame_response({"n": len(items)}, items)
        await plane.notifier.wait(ev, remaining)


@route(kinds=USERS)
async def queue_len(request: Request) -> Response:
    qid = request.path_params["object_id"]
    body = await json_body(request)
    partition = field(body, "partition", str, None, optional=True)
    total = field(body, "total", bool, False)
    n = await plane_of(request).store.write(lambda tx: storage.queue_len(tx, qid, partition, total))
    return JSONResponse({"len": n})


@route(kinds=USERS)
async def queue_clear(request: Request) -> Response:
    qid = request.path_params["object_id"]
    body = await json_body(request)
    partition = field(body, "partition", str, None, optional=True)
    everything = field(body, "all", bool, False)
    await plane_of(request).store.write(lambda tx: storage.queue_clear(tx, qid, partition, everything))
    return JSONResponse({"ok": True})
