"""Routes only workers call: register, poll for assignments, report container events, logs, channel."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from vivace.protocol.functions import GPU_TYPE
from vivace.protocol.usage import DEFAULT_POOL, check_pool
from vivace.protocol.versions import VERSION_HEADER, check_compatible
from vivace.server.api.common import (
    authenticate,
    check_worker,
    field,
    frame_response,
    json_body,
    plane_of,
    route,
)
from vivace.server.channel import WorkerChannel
from vivace.server.errors import ApiError, Invalid, NotFound
from vivace.server.services import logs, secrets, workers


@route(kinds=("worker",))
async def register(request: Request) -> Response:
    body = await json_body(request)
    name = field(body, "name", str)
    cpu = field(body, "cpu", (int, float))
    memory = field(body, "memory", int)
    labels = field(body, "labels", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise Invalid("'labels' must map names to strings")
    try:
        check_pool(labels.get("pool", DEFAULT_POOL))
    except ValueError as err:
        raise Invalid(f"labels.pool: {err}") from None
    runtimes = field(body, "runtimes", list, ["process"])
    if cpu <= 0 or memory <= 0:
        raise Invalid("cpu and memory must be positive")
    if not all(isinstance(r, str) for r in runtimes) or not runtimes:
        raise Invalid("runtimes must be a non-empty list of names")
    gpus = _gpus(field(body, "gpus", list, [], optional=True))
    replaces = field(body, "replaces", str, None, optional=True)
    version = request.headers.get(VERSION_HEADER, "")
    plane = plane_of(request)
    token_id = request.scope.get("vivace.token_id")
    if replaces:
        try:
            await check_worker(request, replaces)
        except NotFound:
            replaces = None  # nothing to retire

    def op(tx: Any) -> tuple[str, set[str]]:
        lost = workers.retire(tx, replaces, "worker restarted") if replaces else set()
        wid = workers.register(tx, name, float(cpu), memory, labels, runtimes, version, token_id, gpus)
        return wid, lost

    wid, lost = await plane.store.write(op)
    if replaces:
        plane.requeued(lost)
    plane.notifier.wake("autoscale")
    return JSONResponse({"worker_id": wid, "worker_timeout": plane.config.worker_timeout})


MAX_WORKER_GPUS = 64


def _gpus(raw: list[Any]) -> list[dict[str, Any]]:
    """A worker's GPUs: distinct indices and model names users can ask for (upper-cased here)."""
    if len(raw) > MAX_WORKER_GPUS:
        raise Invalid(f"'gpus' lists {len(raw)} GPUs; at most {MAX_WORKER_GPUS} are allowed")
    out: dict[int, dict[str, Any]] = {}
    for n, g in enumerate(raw):
        try:
            if not isinstance(g, dict):
                raise Invalid("must be an object with 'index', 'type', 'uuid' and 'memory_mib'")
            index = field(g, "index", int)
            kind = field(g, "type", str).strip().upper()
            uuid = field(g, "uuid", str, "", optional=True)
            mib = field(g, "memory_mib", int, 0, optional=True)
            if not 0 <= index < 1024 or index in out:
                raise Invalid(f"'index' must be a distinct integer from 0 to 1023, got {index}")
            if not GPU_TYPE.fullmatch(kind):
                raise Invalid(
                    f"'type' must be a model name of letters, digits, '.', '_' or '-', got {kind!r}"
                )
            if len(uuid) > 128 or not 0 <= mib <= 1 << 30:
                raise Invalid("'uuid' must be at most 128 characters and 'memory_mib' a non-negative integer")
        except Invalid as err:
            raise Invalid(f"gpus[{n}]: {err.message}") from None
        out[index] = {"index": index, "uuid": uuid, "type": kind, "memory_mib": mib}
    return [out[i] for i in sorted(out)]


def _gpu_stats(raw: list[Any] | None) -> list[dict[str, int]] | None:
    if raw is None:
        return None
    if len(raw) > MAX_WORKER_GPUS:
        raise Invalid(f"'gpu_stats' lists {len(raw)} GPUs; at most {MAX_WORKER_GPUS}")
    out = []
    for n, g in enumerate(raw):
        if not isinstance(g, dict):
            raise Invalid(f"gpu_stats[{n}] must be an object")
        item = {k: field(g, k, int) for k in ("index", "utilization", "memory_used_mib", "memory_total_mib")}
        if not (
            0 <= item["utilization"] <= 100
            and 0 <= item["memory_used_mib"] <= item["memory_total_mib"] <= 1 << 30
        ):
            raise Invalid(f"gpu_stats[{n}]: utilization is a percentage and memory in MiB, used <= total")
        out.append(item)
    return out


@route(kinds=("worker",))
async def poll(request: Request) -> Response:
    """Long-poll: returns at once when there is something to start or stop, else after ``wait``."""
    worker_id = request.path_params["worker_id"]
    await check_worker(request, worker_id)
    body = await json_body(request)
    held = field(body, "held", list, [])
    stopping = set(field(body, "stopping", list, []))
    wait = field(body, "wait", (int, float), 10.0)
    if not all(isinstance(c, str) for c in held) or not 0 <= wait <= 30:
        raise Invalid("'held' must list container ids and 'wait' be 0-30 seconds")
    stats = _gpu_stats(field(body, "gpu_stats", list, None, optional=True))
    plane = plane_of(request)
    deadline = time.monotonic() + wait

    if stats is not None:
        await plane.store.write(lambda tx: workers.set_gpu_stats(tx, worker_id, stats))

    def op(tx: Any) -> tuple[workers.PollResult, dict[str, dict[str, str]], set[str]]:
        res = workers.poll(tx, worker_id, held)
        # secrets' values leave the server only here, inside the assignment of the container that uses them
        envs, failed = secrets.attach_envs(tx, plane.secretbox, worker_id, res.start)
        return res, envs, failed

    while True:
        ev = plane.notifier.event("workers")
        res, envs, failed = await plane.store.write(op)
        if failed:
            plane.requeued(failed)
        res.stop = [c for c in res.stop if c not in stopping]
        remaining = deadline - time.monotonic()
        if res.start or res.stop or remaining <= 0:
            break
        await plane.notifier.wait(ev, min(remaining, 5.0))
    blobs: list[bytes] = []
    start = []
    for a in res.start:
        item: dict[str, Any] = {
            "container_id": a.container_id,
            "function_id": a.function_id,
            "app_id": a.app_id,
            "lease_token": a.lease_token,
            "spec": a.spec,
            "definition": None,
            "gpus": a.gpus,
            "image": a.image,
        }
        if a.container_id in envs:
            item["secret_env"] = envs[a.container_id]
        if a.definition is not None:
            item["definition"] = len(blobs)
            blobs.append(a.definition)
        start.append(item)
    cancel = {c: sorted(plane.cancel_requests.pop(c)) for c in held if c in plane.cancel_requests}
    grace = {c: g for c, g in res.grace.items() if c in res.stop}
    return frame_response(
        {"start": start, "stop": sorted(set(res.stop)), "grace": grace, "cancel": cancel}, blobs
    )


@route(kinds=("worker",))
async def events(request: Request) -> Response:
    worker_id = request.path_params["worker_id"]
    await check_worker(request, worker_id)
    body = await json_body(request)
    evs = [_container_event(ev) for ev in field(body, "events", list)]  # all checked before any applies
    plane = plane_of(request)
    touched: set[str] = set()
    for ev in evs:
        touched |= await plane.store.write(functools.partial(_event_op, worker_id, ev))
        cid = ev.container_id
        plane.notifier.wake(f"container:{cid}")  # a sandbox's waiters (wait, exec before it runs)
        if ev.event == "exited":
            plane.container_cache.pop(cid, None)
            plane.container_scopes.pop(cid, None)
            plane.ready_containers.discard(cid)
    plane.requeued(touched)
    return JSONResponse({"ok": True})


MAX_EVENT_AGE = 7 * 86400.0  # a report delayed longer than this is a bug, not a late report


def _container_event(ev: Any) -> workers.ContainerEvent:
    if not isinstance(ev, dict):
        raise Invalid("each event must be an object")
    kind = field(ev, "event", str)
    if kind not in ("started", "exited"):
        raise Invalid("event must be 'started' or 'exited'")
    out = workers.ContainerEvent(
        field(ev, "container_id", str),
        kind,
        field(ev, "exit_code", int, None, optional=True),
        field(ev, "reason", str, None, optional=True),
        float(field(ev, "ago", (int, float), 0.0, optional=True)),
        _opt_float(field(ev, "image_s", (int, float), None, optional=True)),
        _opt_float(field(ev, "cpu_used_s", (int, float), None, optional=True)),
        field(ev, "memory_peak", int, None, optional=True),
    )
    for name in ("ago", "image_s", "cpu_used_s"):
        v = getattr(out, name)
        if v is not None and not (math.isfinite(v) and 0 <= v <= MAX_EVENT_AGE * 64):
            raise Invalid(f"'{name}' must be a non-negative number of seconds, got {v!r}")
    if out.ago > MAX_EVENT_AGE:
        raise Invalid(f"'ago' must be at most {MAX_EVENT_AGE:g} seconds, got {out.ago!r}")
    if out.memory_peak is not None and out.memory_peak < 0:
        raise Invalid(f"'memory_peak' must be a non-negative number of bytes, got {out.memory_peak}")
    return out


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _event_op(worker_id: str, ev: workers.ContainerEvent, tx: Any) -> set[str]:
    return workers.container_event(tx, worker_id, ev)


@route(kinds=("worker",))
async def put_logs(request: Request) -> Response:
    body = await json_body(request)
    lines = field(body, "lines", list)
    for ln in lines:
        if not isinstance(ln, dict) or not isinstance(ln.get("app_id"), str) or "line" not in ln:
            raise Invalid("each log line needs 'app_id' and 'line'")
        if ln.get("stream", "stdout") not in logs.STREAMS:
            raise Invalid(f"a log line's 'stream' is one of {', '.join(logs.STREAMS)}")
        seq, ts = ln.get("input_seq"), ln.get("ts")
        if (seq is not None and (isinstance(seq, bool) or not isinstance(seq, int))) or (
            ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float))
        ):
            raise Invalid("a log line's 'input_seq' is an integer and its 'ts' a number")
        for key in ("function_id", "container_id"):
            if ln.get(key) is not None and not isinstance(ln[key], str):
                raise Invalid(f"a log line's {key!r} is a string")
        ln.pop("call_id", None)  # the store finds it from the input
    plane = plane_of(request)
    apps = await plane.store.write(lambda tx: logs.append(tx, lines))
    plane.notifier.wake(*(f"logs:{a}" for a in apps))
    return JSONResponse({"stored": len(lines)})


async def channel(ws: WebSocket) -> None:
    """The long-lived channel through which the control plane reaches a worker's containers."""
    worker_id = ws.path_params["worker_id"]
    try:
        msg = check_compatible(ws.headers.get(VERSION_HEADER), "the worker")
        if msg:
            raise Invalid(msg)
        kind = await authenticate(ws)  # type: ignore[arg-type]
        if kind != "worker":
            raise Invalid("only worker tokens may open a channel")
        await check_worker(ws, worker_id)  # type: ignore[arg-type]
    except ApiError:
        await ws.close(code=4401)
        return
    await ws.accept()
    plane = ws.app.state.plane
    chan = WorkerChannel(ws)
    old = plane.channels.get(worker_id)
    plane.channels[worker_id] = chan
    if old is not None:
        old.fail("replaced by a newer channel")
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            chan.deliver_raw(dict(message))
    except (WebSocketDisconnect, asyncio.CancelledError, RuntimeError):
        pass
    finally:
        chan.fail("worker channel closed")
        if plane.channels.get(worker_id) is chan:
            del plane.channels[worker_id]
