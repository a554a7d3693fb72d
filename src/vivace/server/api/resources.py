"""Apps, functions, containers, tokens, logs and blobs."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from vivace._version import __version__
from vivace.protocol.functions import FunctionSpec, SpecError
from vivace.protocol.versions import VERSION_HEADER
from vivace.server.api.common import (
    USERS,
    allow_function,
    field,
    frame_body,
    json_body,
    plane_of,
    query_float,
    query_int,
    route,
)
from vivace.server.blobs import BlobError, BlobTooLarge
from vivace.server.channel import ChannelError
from vivace.server.errors import Conflict, Forbidden, Invalid, NotFound
from vivace.server.services import apps, calls, containers, logs, metering, tokens, workers

MAX_BLOB = 64 << 30  # bytes: the largest image layer or payload the blob store takes


@route(kinds=("user", "worker", "container"))
async def version(request: Request) -> Response:
    return JSONResponse({"version": __version__, "store": plane_of(request).store.dialect.name})


@route()
async def create_token(request: Request) -> Response:
    body = await json_body(request)
    kind = field(body, "kind", str, "user")
    label = field(body, "label", str, None, optional=True)
    if kind not in tokens.KINDS:
        raise Invalid(f"kind must be one of {list(tokens.KINDS)}")
    tid, secret = await plane_of(request).store.write(lambda tx: tokens.create_token(tx, kind, label))
    return JSONResponse({"token_id": tid, "token_secret": secret, "kind": kind})


@route(kinds=("user", "worker"))
async def token_info(request: Request) -> Response:
    token_id = request.headers["authorization"][7:].partition(":")[0]
    return JSONResponse({"token_id": token_id, "kind": request.state.token_kind})


@route()
async def create_app(request: Request) -> Response:
    body = await json_body(request)
    name = field(body, "name", str, None, optional=True)
    state = field(body, "state", str, "ephemeral")
    if state not in ("ephemeral", "detached", "deployed"):
        raise Invalid("state must be 'ephemeral', 'detached' or 'deployed'")
    if name is not None and not (0 < len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)):
        raise Invalid("app names are 1-64 characters of letters, digits, '-', '_' and '.'")
    client_version = request.headers.get(VERSION_HEADER, "")
    plane = plane_of(request)
    res = await plane.store.write(lambda tx: apps.create_app(tx, name, state, client_version))
    res["heartbeat_interval"] = min(5.0, plane.config.app_heartbeat_timeout / 4)
    return JSONResponse(res)


@route()
async def list_apps(request: Request) -> Response:
    include = request.query_params.get("all") in ("1", "true")
    return JSONResponse({"apps": await plane_of(request).store.read(lambda tx: apps.list_apps(tx, include))})


@route()
async def list_functions(request: Request) -> Response:
    app_id = await _app_of(request)
    return JSONResponse(
        {"functions": await plane_of(request).store.read(lambda tx: apps.list_functions(tx, app_id))}
    )


@route()
async def app_heartbeat(request: Request) -> Response:
    app_id = request.path_params["app_id"]
    await plane_of(request).store.write(lambda tx: apps.heartbeat(tx, app_id))
    return JSONResponse({"ok": True})


async def _app_of(request: Request) -> str:
    """The app the path names (``{app_id}``: its id, or a deployed app's name)."""
    ref = request.path_params["app_id"]
    return await plane_of(request).store.read(lambda tx: apps.find_app(tx, ref))  # type: ignore[no-any-return]


@route()
async def stop_app(request: Request) -> Response:
    plane = plane_of(request)
    app_id = await _app_of(request)
    await plane.stop_app(app_id, "stopped by request")
    return JSONResponse({"app_id": app_id, "stopped": True})


@route()
async def record_deploy(request: Request) -> Response:
    """The end of a deploy: ``{"function_ids": [...]}`` are the app's functions now; recorded as its next
    version, and the functions it no longer has are retired."""
    from vivace.server.services import versions

    body = await json_body(request)
    fids = body.get("function_ids")
    if not isinstance(fids, list) or not all(isinstance(f, str) for f in fids) or len(fids) > 10_000:
        raise Invalid("'function_ids' must be a list of function ids")
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > 500):
        raise Invalid("'note' must be a string of at most 500 characters")
    plane = plane_of(request)
    app_id = request.path_params["app_id"]
    out = await plane.store.write(lambda tx: versions.record(tx, app_id, fids, note))
    if out["retired"]:
        plane.workers_changed()
    plane.notifier.wake("autoscale")
    return JSONResponse({"app_id": app_id, "version": out["version"]})


@route()
async def app_history(request: Request) -> Response:
    from vivace.server.services import versions

    plane = plane_of(request)
    app_id = await _app_of(request)
    rows = await plane.store.read(lambda tx: versions.history(tx, app_id))
    return JSONResponse({"app_id": app_id, "versions": rows})


@route()
async def rollback_app(request: Request) -> Response:
    """``{"version": n}`` (or null: the one before the current) deployed again, as a new version."""
    from vivace.server.services import versions

    body = await json_body(request)
    version = body.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise Invalid("'version' must be a positive integer or null")
    plane = plane_of(request)
    app_id = await _app_of(request)
    out = await plane.store.write(lambda tx: versions.rollback(tx, app_id, version))
    if out["retired"]:
        plane.workers_changed()
    plane.notifier.wake("autoscale")
    return JSONResponse(
        {"app_id": app_id, "version": out["version"], "rolled_back_to": out["rolled_back_to"]}
    )


@route()
async def app_schedules(request: Request) -> Response:
    """The app's scheduled functions: each one's schedule, last tick fired and next run."""
    from vivace.server.services import schedules

    plane = plane_of(request)
    app_id = await _app_of(request)
    rows = await plane.store.read(lambda tx: schedules.upcoming(tx, app_id))
    return JSONResponse({"app_id": app_id, "schedules": rows})


@route()
async def register_function(request: Request) -> Response:
    """Frames: header ``{"spec": {...}}``, optional payload: the cloudpickled function (serialized=True)."""
    app_id = request.path_params["app_id"]
    header, blobs = await frame_body(request)
    try:
        spec = FunctionSpec.from_dict(header.get("spec"))
    except (SpecError, TypeError) as exc:
        raise Invalid(f"invalid function spec: {exc}") from None
    if spec.serialized and not blobs:
        raise Invalid("a serialized function needs its payload")
    if "#" in spec.name or spec.variant_of is not None or spec.params is not None:
        raise Invalid("variants are made with POST /v1/functions/{id}/variants; names cannot contain '#'")
    plane = plane_of(request)
    if spec.source_hash is not None and not plane.blobs.exists(spec.source_hash):
        raise Invalid(f"source blob {spec.source_hash} has not been uploaded")
    if spec.image_id is not None:
        from vivace.server.services import images

        image = await plane.store.read(lambda tx: images.get(tx, str(spec.image_id)))
        if image.state != "ready":
            raise Invalid(f"image {spec.image_id} is {image.state}, not built: build it before registering")
    for digest in spec.image_mounts:
        if not plane.blobs.exists(digest):
            raise Invalid(f"the files attached to the image ({digest}) have not been uploaded")
    definition = blobs[0] if blobs else None
    fid, stale = await plane.store.write(lambda tx: _register(tx, app_id, spec, definition))
    if stale:
        plane.workers_changed()
    plane.notifier.wake("autoscale")
    return JSONResponse({"function_id": fid})


def _register(tx: Any, app_id: str, spec: FunctionSpec, definition: bytes | None) -> tuple[str, list[str]]:
    fid, stale = apps.register_function(tx, app_id, spec, definition)
    for cid in stale:
        containers.request_stop(tx, cid, containers.REDEPLOYED)
    return fid, stale


@route(kinds=USERS)
async def lookup_function(request: Request) -> Response:
    """By deployed app name (``app``), or by app id (``app_id``: any live app; a container: its own)."""
    app_name = request.query_params.get("app")
    app_id = request.query_params.get("app_id")
    name = request.query_params.get("name")
    if not name or (not app_name) == (not app_id):
        raise Invalid(
            "query parameters 'name' and one of 'app' (a deployed app's name) or 'app_id' are required"
        )
    if app_id is not None and request.state.token_kind == "container" and app_id != request.state.scope_app:
        raise Forbidden("a container looks up its own app's functions by id, others by deployed name")
    store = plane_of(request).store
    if app_id is not None:
        info = await store.read(lambda tx: apps.lookup_function_in(tx, app_id, name))
    else:
        info = await store.read(lambda tx: apps.lookup_function(tx, str(app_name), name))
    return JSONResponse({"function_id": info.id, "app_id": info.app_id, "spec": info.spec.to_dict()})


@route(kinds=USERS)
async def create_variant(request: Request) -> Response:
    """A function with class parameters bound and/or options applied; idempotent by content."""
    base_id = request.path_params["function_id"]
    await allow_function(request, base_id)
    body = await json_body(request)
    params = field(body, "params", dict, None, optional=True)
    options = field(body, "options", dict, {})
    unknown = sorted(set(body) - {"params", "options"})
    if unknown:
        raise Invalid(f"unknown fields: {', '.join(unknown)}")
    plane = plane_of(request)
    try:
        fid, spec, stale = await plane.store.write(lambda tx: _variant(tx, base_id, params, options))
    except (SpecError, TypeError) as exc:
        raise Invalid(f"invalid options: {exc}") from None
    if stale:
        plane.workers_changed()
    plane.notifier.wake("autoscale")
    return JSONResponse({"function_id": fid, "spec": spec.to_dict()})


def _variant(
    tx: Any, base_id: str, params: dict[str, Any] | None, options: dict[str, Any]
) -> tuple[str, FunctionSpec, list[str]]:
    fid, spec, stale = apps.register_variant(tx, base_id, params, options)
    for cid in stale:
        containers.request_stop(tx, cid, containers.REDEPLOYED)
    return fid, spec, stale


@route(kinds=USERS)
async def lookup_app(request: Request) -> Response:
    name = request.query_params.get("name")
    if not name:
        raise Invalid("query parameter 'name' is required")
    app_id = await plane_of(request).store.read(lambda tx: apps.lookup_app(tx, name))
    return JSONResponse({"app_id": app_id, "name": name})


@route(kinds=USERS)
async def function_stats(request: Request) -> Response:
    fid = request.path_params["function_id"]
    await allow_function(request, fid)
    return JSONResponse(await plane_of(request).store.read(lambda tx: calls.function_stats(tx, fid)))


@route(kinds=USERS)
async def update_autoscaler(request: Request) -> Response:
    fid = request.path_params["function_id"]
    await allow_function(request, fid)
    body = await json_body(request)
    allowed = {"min_containers", "max_containers", "buffer_containers", "scaledown_window"}
    bad = set(body) - allowed
    if bad:
        raise Invalid(f"unknown autoscaler settings: {', '.join(sorted(bad))}")
    plane = plane_of(request)
    try:
        spec = await plane.store.write(lambda tx: apps.update_autoscaler(tx, fid, body))
    except (SpecError, TypeError) as exc:
        raise Invalid(str(exc)) from None
    plane.notifier.wake("autoscale")
    return JSONResponse({"spec": spec.to_dict()})


@route()
async def list_containers(request: Request) -> Response:
    plane = plane_of(request)
    ref = request.query_params.get("app")
    include = request.query_params.get("all") in ("1", "true")
    app_id = await plane.store.read(lambda tx: apps.find_app(tx, ref)) if ref else None
    rows = await plane.store.read(
        lambda tx: containers.list_containers(tx, app_id=app_id, include_stopped=include)
    )
    return JSONResponse({"containers": rows})


@route()
async def get_container(request: Request) -> Response:
    cid = request.path_params["container_id"]

    def op(tx: Any) -> dict[str, Any]:
        return {**containers.get_container(tx, cid), "meter": metering.describe_container(tx, cid)}

    return JSONResponse(await plane_of(request).store.read(op))


@route()
async def stop_container(request: Request) -> Response:
    cid = request.path_params["container_id"]
    plane = plane_of(request)
    changed = await plane.store.write(lambda tx: containers.request_stop(tx, cid, "stopped by request"))
    plane.workers_changed()
    return JSONResponse({"container_id": cid, "stopping": changed})


@route()
async def exec_in_container(request: Request) -> Response:
    cid = request.path_params["container_id"]
    body = await json_body(request)
    argv = field(body, "argv", list)
    timeout = field(body, "timeout", (int, float), 60)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise Invalid("argv must be a non-empty list of strings")
    if not 0 < timeout <= 3600:
        raise Invalid("timeout must be between 0 and 3600 seconds")
    plane = plane_of(request)
    worker_id, state = await plane.store.read(lambda tx: workers.worker_of(tx, cid))
    if state != "running" or worker_id is None:
        raise Conflict(f"container {cid} is {state}, not running")
    chan = plane.channels.get(worker_id)
    if chan is None:
        raise ChannelError(f"worker {worker_id} has no open channel")
    reply = await chan.request(
        {"type": "exec", "container_id": cid, "argv": argv, "timeout": timeout}, timeout + 5
    )
    if reply.get("error"):
        raise Conflict(str(reply["error"]), code="exec_failed")
    return JSONResponse({k: reply.get(k) for k in ("stdout", "stderr", "returncode")})


@route()
async def list_workers(request: Request) -> Response:
    return JSONResponse({"workers": await plane_of(request).store.read(workers.list_workers)})


@route()
async def read_logs(request: Request) -> Response:
    """Lines by app, container or call (at least one), filtered by function (name or id), time
    (``since``/``until``, epoch seconds), text (``search``) and ``stream`` (comma-separated); after
    ``cursor``, waiting up to ``wait`` seconds for the first."""
    plane = plane_of(request)
    q = request.query_params
    ref, cid, call = q.get("app"), q.get("container"), q.get("call")
    if not (ref or cid or call):
        raise Invalid("give 'app', 'container' or 'call'")
    streams = tuple(s.strip() for s in q["stream"].split(",") if s.strip()) if q.get("stream") else None
    if streams is not None and (not streams or set(streams) - set(logs.STREAMS)):
        raise Invalid(f"'stream' takes names among {', '.join(logs.STREAMS)}, got {q['stream']!r}")
    since = query_float(request, "since", -1.0, 0.0, 1e11) if "since" in q else None
    until = query_float(request, "until", -1.0, 0.0, 1e11) if "until" in q else None
    cursor = query_int(request, "cursor", 0, 0, 2**62)
    wait = query_float(request, "wait", 0.0, 0.0, 60.0)
    limit = query_int(request, "limit", 1000, 1, 1000)

    def resolve(tx: Any) -> logs.LogFilter:
        app_id = apps.find_app(tx, ref) if ref else None
        if app_id is None and cid:  # a container's lines wake its app's waiters: follow those
            app_id = tx.scalar("SELECT app_id FROM containers WHERE id = ?", (cid,))
            if app_id is None:
                raise NotFound(f"container {cid} does not exist")
        if app_id is None and call:
            app_id = tx.scalar(
                "SELECT f.app_id FROM calls c JOIN functions f ON f.id = c.function_id WHERE c.id = ?",
                (call,),
            )
            if app_id is None:
                raise NotFound(f"call {call} does not exist (a web request's call is not kept)")
        fn = q.get("function")
        fids: tuple[str, ...] | None = None
        if fn:
            rows = tx.fetchall(
                "SELECT id FROM functions WHERE (id = ? OR name = ?) AND app_id = ?", (fn, fn, app_id)
            )
            fids = tuple(str(r[0]) for r in rows)
            if not fids:
                raise NotFound(f"the app has no function {fn!r}")
        return logs.LogFilter(app_id, cid, fids, call, q.get("search") or None, since, until, streams)

    f = await plane.store.read(resolve)
    deadline = time.monotonic() + wait
    while True:
        ev = plane.notifier.event(f"logs:{f.app_id}")
        lines = await plane.store.read(lambda tx: logs.read(tx, f, cursor=cursor, limit=limit))
        remaining = deadline - time.monotonic()
        if lines or remaining <= 0 or not f.app_id:
            break
        await plane.notifier.wait(ev, remaining)
    return JSONResponse({"app_id": f.app_id, "lines": lines, "cursor": lines[-1]["id"] if lines else cursor})


@route(kinds=("user", "worker", "container"))  # a container uploads to volumes (reads go through them)
async def put_blob(request: Request) -> Response:
    """The body streams to a temporary file beside the blob, hashed on the way (image layers run to
    gigabytes); it becomes the blob only when it hashes to its address."""
    sha = request.path_params["sha"]
    blobs = plane_of(request).blobs
    try:
        if blobs.exists(sha):  # content-addressed: the same bytes are there already
            async for _ in request.stream():
                pass
            blobs.touch(sha)  # a collection that chose it meanwhile leaves it alone
            size = blobs.size(sha)
        else:
            size = await blobs.put_stream(request.stream(), sha, MAX_BLOB)
    except BlobTooLarge as exc:
        from vivace.server.errors import TooLarge

        raise TooLarge(str(exc)) from None
    except BlobError as exc:
        raise Invalid(str(exc)) from None
    return JSONResponse({"sha256": sha, "size": size})


class BlobFile(FileResponse):
    chunk_size = 1 << 20  # blobs run to gigabytes: fewer, larger reads than the default 64 KiB


@route(kinds=("user", "worker"))
async def get_blob(request: Request) -> Response:
    sha = request.path_params["sha"]
    try:
        path = plane_of(request).blobs.path(sha)
    except BlobError as exc:
        raise Invalid(str(exc)) from None
    if path is None:
        raise NotFound(f"blob {sha} does not exist")
    return BlobFile(path, media_type="application/octet-stream")  # streamed from the file


@route(kinds=("user", "worker", "container"))
async def head_blob(request: Request) -> Response:
    sha = request.path_params["sha"]
    try:
        exists = plane_of(request).blobs.exists(sha)
    except BlobError as exc:
        raise Invalid(str(exc)) from None
    return Response(status_code=200 if exists else 404)
