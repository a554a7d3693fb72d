"""The HTTP gateway: a request to a web endpoint becomes one input of its function; its outputs are the
response, streamed as the container produces them.

Endpoints are reached by host (``<app>-<label>.<web domain>``, with ``--web-domain``) or by path
(``/web/<app>-<label>/...`` on the API's own address, for setups without wildcard DNS). Being an input,
a request waits in the backlog while a container starts (a cold request is slow, never refused),
counts towards scaling like any call (``@concurrent`` lets a container take several) and ends with the
function's timeout (504). The gateway's own refusals are 4xx: an unknown endpoint 404, a missing or
wrong proxy token 401, a body over ``MAX_REQUEST_BODY`` 413. A client that goes away cancels its input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from vivace.protocol import frames, ids
from vivace.protocol import web as proto
from vivace.protocol.calls import FINAL, CallKind, OutputStatus
from vivace.server.api.common import (
    SESSION_COOKIE,
    USERS,
    allow_call,
    allow_function,
    frame_response,
    plane_of,
    problem,
    query_float,
    query_int,
    route,
)
from vivace.server.errors import ApiError, Gone, TooLarge, Unauthorized
from vivace.server.services import calls, tokens
from vivace.server.services import web as routes
from vivace.server.store.base import StoreError

log = logging.getLogger("vivace.gateway")
ROUTE_TTL = 1.0  # seconds a host's route is cached (a redeploy shows within this)
START_ALLOWANCE = 600.0  # a request waits this long beyond the function's timeout for its first byte
POLL = 25.0
PROXY_KEY, PROXY_SECRET = "modal-key", "modal-secret"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class EndpointFailed(ApiError):
    status, code = 502, "endpoint_failed"


class EndpointTimeout(ApiError):
    status, code = 504, "endpoint_timeout"


async def by_path(request: Request) -> Response:
    """``/web/<host>/<path>``: an ASGI app sees root path ``/web/<host>`` and the whole path (as ASGI
    servers give it); a WSGI app the path after its ``SCRIPT_NAME``; a web_server ``/<path>``."""
    host = request.path_params["host"]
    root = f"/web/{host}"
    return await serve(request, host, root + "/" + request.path_params.get("path", ""), root)


async def ws_by_path(websocket: WebSocket) -> None:
    host = websocket.path_params["host"]
    root = f"/web/{host}"
    await serve_ws(websocket, host, root + "/" + websocket.path_params.get("path", ""), root)


class ByHost:
    """ASGI middleware: with ``--web-domain D``, a request for ``<label>.D`` goes to that endpoint;
    everything else (the API itself) passes through."""

    def __init__(self, app: Any, config: Any) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        domain = self.config.web_domain
        if domain and scope["type"] in ("http", "websocket"):
            raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            label = host_of(raw, domain)
            if label is not None and scope["type"] == "websocket":
                await serve_ws(WebSocket(scope, receive, send), label, scope["path"] or "/")
                return
            if label is not None:
                request = Request(scope, receive)
                response = await serve(request, label, scope["path"] or "/")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@route(kinds=USERS)
async def web_urls(request: Request) -> Response:
    """The URLs a function's web endpoints answer at: ``{"urls": {method or "": url}}``."""
    function_id = request.path_params["function_id"]
    await allow_function(request, function_id)
    plane = plane_of(request)
    hosts = await plane.store.read(lambda tx: routes.hosts_of(tx, function_id))
    return JSONResponse({"urls": {m: url_for(request, plane.config.web_domain, h) for m, h in hosts.items()}})


def url_for(request: Request, domain: str | None, host: str) -> str:
    if domain:
        return f"{request.url.scheme}://{host}.{domain}/"
    return f"{str(request.base_url).rstrip('/')}/web/{host}/"


def host_of(request_host: str, domain: str) -> str | None:
    """The endpoint's host label when ``request_host`` is ``<label>.<domain>`` (any port)."""
    name = request_host.rsplit(":", 1)[0] if request_host.count(":") == 1 else request_host
    name, domain = name.lower().rstrip("."), domain.lower().rsplit(":", 1)[0].rstrip(".")
    if not name.endswith("." + domain):
        return None
    label = name[: -len(domain) - 1]
    return label if label and "." not in label else None


async def serve(request: Request, host: str, path: str, root_path: str = "") -> Response:
    try:
        return await _serve(request, host, path, root_path)
    except ApiError as err:
        return problem(err)
    except StoreError as err:
        log.error("web %s %s: %s", request.method, host, err)
        return problem(
            ApiError("the control plane's store failed; retry", code="store_unavailable", status=503)
        )


async def _serve(request: Request, host: str, path: str, root_path: str) -> Response:
    plane = plane_of(request)
    route = await _route(plane, host)
    if route.web.get("requires_proxy_auth"):  # before reading a body from someone not allowed
        await _check_proxy_auth(plane, request)
    body = await _read_body(request)
    headers = _forwarded(request.headers.items())
    client = (request.client.host, request.client.port) if request.client else None
    server = request.scope.get("server")
    call_id = ids.new_id(ids.FUNCTION_CALL)
    for attempt in (1, 2):
        payload = proto.encode_request(
            request.method, path, request.url.query.encode("latin-1"), headers, body,
            scheme=request.url.scheme, root_path=root_path, client=client,
            server=tuple(server) if server else None, call=route.method,
        )  # fmt: skip
        try:
            await _put_request(plane, call_id, route.function_id, payload)
            break
        except Gone:  # the cached route's app stopped (a redeploy, a serve restart): look again once
            if attempt == 2:
                raise
            plane.web_routes.pop(host, None)
            route = await _route(plane, host)
            if route.web.get("requires_proxy_auth"):
                await _check_proxy_auth(plane, request)
    plane.inputs_changed(route.function_id)
    stream = _Outputs(plane, call_id)
    wait = float(route.spec.timeout) + START_ALLOWANCE
    try:
        first = await stream.next(request, time.monotonic() + wait)
        status, out_headers, chunk = _first_piece(first, route.spec.timeout)
    except BaseException:
        plane.web_finished.add(call_id)
        await stream.cancel()
        raise

    async def rest() -> AsyncIterator[bytes]:
        finished = first.part == FINAL
        try:
            if chunk:
                yield chunk
            while not finished:
                out = await stream.next(None, time.monotonic() + wait)
                finished = out.part == FINAL
                if out.status not in ("item", OutputStatus.SUCCESS.value):
                    log.warning("web %s: the response stopped early: %s", host, out.status)
                    return
                _, _, more = proto.decode_piece(stream.data(out))
                if more:
                    yield more
        finally:
            plane.web_finished.add(call_id)  # the reaper deletes the call once its input is done
            if not finished:
                await stream.cancel()

    response = StreamingResponse(rest(), status_code=status)
    response.raw_headers = _response_headers(out_headers)
    return response


async def _put_request(plane: Any, call_id: str, function_id: str, payload: bytes) -> None:
    """The request as a call of one input, stored (a big body goes to the blob store)."""
    data, ref = (
        await asyncio.to_thread(plane.stash, payload) if len(payload) > 1 << 20 else plane.stash(payload)
    )

    def op(tx: Any) -> tuple[str, int]:
        calls.create_call(tx, call_id, function_id, CallKind.WEB.value)
        return calls.put_inputs(tx, call_id, [(0, data, ref)], 1)

    await plane.store.write(op)


async def _route(plane: Any, host: str) -> routes.Route:
    cache: dict[str, tuple[float, routes.Route]] = plane.web_routes
    hit = cache.get(host)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1]
    route: routes.Route = await plane.store.read(lambda tx: routes.find(tx, host))
    if len(cache) > 10_000:
        cache.clear()
    cache[host] = (now + ROUTE_TTL, route)
    return route


async def _check_proxy_auth(plane: Any, request: Request) -> None:
    key, secret = request.headers.get(PROXY_KEY), request.headers.get(PROXY_SECRET)
    if not key or not secret:
        raise Unauthorized(
            "this endpoint requires proxy auth: send the Modal-Key and Modal-Secret headers of a proxy "
            "token (vivace token new --kind proxy)"
        )
    kind = await plane.store.read(lambda tx: tokens.verify(tx, key, secret))
    if kind != "proxy":
        raise Unauthorized("the Modal-Key / Modal-Secret pair is not a valid proxy token")


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError("Content-Length must be a number", code="bad_request", status=400)
        if int(length) > proto.MAX_REQUEST_BODY:
            raise TooLarge(f"the request body is over {proto.MAX_REQUEST_BODY >> 20} MiB")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > proto.MAX_REQUEST_BODY:
                raise TooLarge(f"the request body is over {proto.MAX_REQUEST_BODY >> 20} MiB")
    except ClientDisconnect:
        raise ApiError(
            "the client went away while sending its body", code="client_closed", status=400
        ) from None
    return bytes(body)


def _first_piece(out: calls.OutputRow, timeout: float) -> tuple[int, list[tuple[str, str]], bytes]:
    if out.status == OutputStatus.TIMEOUT.value:
        raise EndpointTimeout(f"the endpoint did not answer within its timeout ({timeout:g} s)")
    if out.status == OutputStatus.INIT_FAILURE.value:
        raise EndpointFailed("the endpoint's container failed to start; see `vivace app logs`")
    if out.status == OutputStatus.CANCELLED.value:
        raise ApiError("the request was cancelled (the app stopped?)", code="cancelled", status=503)
    if out.status not in ("item", OutputStatus.SUCCESS.value):
        raise EndpointFailed(f"the endpoint failed ({out.status}); see `vivace app logs`")
    raw = out.data if out.data is not None else b""
    try:
        status, headers, chunk = proto.decode_piece(raw)
    except frames.FrameError as err:
        raise EndpointFailed(f"the endpoint answered with something that is not a response: {err}") from None
    if status is None:
        raise EndpointFailed("the endpoint's first answer had no status")
    return status, headers, chunk


def _forwarded(pairs: Any) -> list[tuple[str, str]]:
    """The request's headers for the app: never the proxy token, nor the dashboard's session cookie (a
    browser signed in to the dashboard sends it to this host)."""
    out = []
    for k, v in pairs:
        name = k.lower()
        if name in (PROXY_KEY, PROXY_SECRET):
            continue
        if name == "cookie":
            kept = [c for c in v.split(";") if c.strip().partition("=")[0] != SESSION_COOKIE]
            if not kept:
                continue
            v = ";".join(kept).strip()
        out.append((k, v))
    return out


def _response_headers(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The app's headers as it sent them (repeated ones such as Set-Cookie kept), less hop-by-hop ones."""
    return [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in pairs
        if k.lower() not in proto.HOP_BY_HOP
    ]


class _Outputs:
    """The outputs of one web call, in order, as they are stored."""

    def __init__(self, plane: Any, call_id: str) -> None:
        self.plane, self.call_id = plane, call_id
        self.cursor = 0
        self.ready: list[calls.OutputRow] = []

    async def next(self, request: Request | None, deadline: float) -> calls.OutputRow:
        plane = self.plane
        while not self.ready:
            ev = plane.notifier.event(f"outputs:{self.call_id}")
            page = await plane.store.read(lambda tx: calls.get_outputs(tx, self.call_id, self.cursor, 100))
            self.cursor = page.cursor
            if page.outputs:
                self.ready = list(page.outputs)
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise EndpointTimeout("no container answered the request in time")
            await plane.notifier.wait(ev, min(left, 2.0 if request is not None else POLL))
            if request is not None and await request.is_disconnected():
                raise ApiError("the client went away", code="client_closed", status=499)
        out = self.ready.pop(0)
        if out.data is None and out.data_ref is not None:
            out = _with_data(out, await asyncio.to_thread(plane.unstash, None, out.data_ref))
        return out

    def data(self, out: calls.OutputRow) -> bytes:
        return out.data if out.data is not None else b""

    async def cancel(self) -> None:
        try:
            await self.plane.cancel_call(self.call_id, False)
        except Exception as err:  # the request ends either way; the input then runs to its end
            log.debug("web call %s: could not cancel: %s", self.call_id, err)


def _with_data(out: calls.OutputRow, data: bytes) -> calls.OutputRow:
    import dataclasses

    return dataclasses.replace(out, data=data, data_ref=None)


# -- WebSockets ------------------------------------------------------------------------------------
WS_DRAIN = 10.0  # after the client leaves, how long the app has to end its session before it is cancelled


async def serve_ws(websocket: WebSocket, host: str, path: str, root_path: str = "") -> None:
    """A WebSocket session as one input of an ``asgi_app``: the app's accept, sends and close come back
    as its outputs; what the client sends is stored for the container to read (``messages`` below)."""
    plane = plane_of(websocket)  # type: ignore[arg-type]
    try:
        route = await _route(plane, host)
        if route.web.get("kind") != "asgi":
            raise ApiError("only an asgi_app endpoint takes WebSockets", code="not_websocket", status=400)
        if route.web.get("requires_proxy_auth"):
            await _check_proxy_auth(plane, websocket)  # type: ignore[arg-type]
    except ApiError as err:
        await _deny(websocket, err)
        return
    await websocket.receive()  # websocket.connect: the client waits until the app accepts
    headers = _forwarded(websocket.headers.items())
    client = (websocket.client.host, websocket.client.port) if websocket.client else None
    payload = proto.encode_request(
        "GET", path, websocket.url.query.encode("latin-1"), headers, b"",
        scheme="https" if websocket.url.scheme == "wss" else "http", root_path=root_path, client=client,
        call=route.method, websocket=True,
    )  # fmt: skip
    call_id = ids.new_id(ids.FUNCTION_CALL)
    await _put_request(plane, call_id, route.function_id, payload)
    plane.inputs_changed(route.function_id)
    stream = _Outputs(plane, call_id)
    outbound = asyncio.ensure_future(_app_to_client(websocket, stream, route.spec.timeout))
    inbound = asyncio.ensure_future(_client_to_app(websocket, plane, call_id))
    try:
        await asyncio.wait([outbound, inbound], return_when=asyncio.FIRST_COMPLETED)
        if not outbound.done():  # the client left: the app was told; give it a moment to finish
            await asyncio.wait([outbound], timeout=WS_DRAIN)
    finally:
        plane.web_finished.add(call_id)
        ended = outbound.done() and not outbound.cancelled() and outbound.exception() is None
        for task in (outbound, inbound):
            task.cancel()
        if not ended:  # the session did not end by the app's close: stop it
            await stream.cancel()
        with contextlib.suppress(Exception):
            await plane.store.write(lambda tx: routes.drop_messages(tx, call_id))


async def _deny(websocket: WebSocket, err: ApiError) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(problem(err))
    else:
        await websocket.close(code=1008, reason=err.message[:120])


async def _app_to_client(websocket: WebSocket, stream: _Outputs, timeout: float) -> None:
    accepted = False
    deadline = time.monotonic() + float(timeout) + START_ALLOWANCE
    while True:
        out = await stream.next(None, deadline)
        if out.status not in ("item", OutputStatus.SUCCESS.value):
            log.warning("websocket %s ended: %s", stream.call_id, out.status)
            if accepted:
                await websocket.close(code=1011)
            else:
                await _deny(websocket, EndpointFailed(f"the endpoint failed ({out.status})"))
            return
        for ev in proto.decode_ws_piece(stream.data(out)):
            if ev["type"] == "websocket.accept":
                headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in ev.get("headers") or []]
                await websocket.accept(subprotocol=ev.get("subprotocol"), headers=headers)
                accepted = True
            elif ev["type"] == "websocket.send" and "bytes" in ev:
                await websocket.send_bytes(ev["bytes"])
            elif ev["type"] == "websocket.send":
                await websocket.send_text(ev.get("text", ""))
            elif ev["type"] == "websocket.close":
                await websocket.close(code=int(ev.get("code", 1000)), reason=ev.get("reason") or None)
                return
        if out.part == FINAL:
            return


async def _client_to_app(websocket: WebSocket, plane: Any, call_id: str) -> None:
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            message = {"type": "websocket.disconnect", "code": 1006}
        if message["type"] not in ("websocket.receive", "websocket.disconnect"):
            continue
        data = proto.encode_message(message)
        await plane.store.write(lambda tx, d=data: routes.put_message(tx, call_id, d))
        plane.notifier.wake(f"webmsg:{call_id}")
        if message["type"] == "websocket.disconnect":
            return


@route(kinds=USERS)
async def messages(request: Request) -> Response:
    """A WebSocket session's client messages after ``after`` (long-poll up to ``wait`` seconds), for the
    container running it: frames, header ``{"messages": [{"seq", "blob"}]}``."""
    call_id = request.path_params["call_id"]
    await allow_call(request, call_id)
    after = query_int(request, "after", 0, 0, 2**62)
    wait = query_float(request, "wait", 0.0, 0.0, 60.0)
    plane = plane_of(request)
    deadline = time.monotonic() + wait
    while True:
        ev = plane.notifier.event(f"webmsg:{call_id}")
        got = await plane.store.read(lambda tx: routes.messages(tx, call_id, after))
        left = deadline - time.monotonic()
        if got or left <= 0:
            break
        await plane.notifier.wait(ev, left)
    header = {"messages": [{"seq": seq, "blob": i} for i, (seq, _) in enumerate(got)]}
    return frame_response(header, [data for _, data in got])
