"""Web endpoints in the container: each HTTP request is one input; the response goes back in pieces.

``WebEndpoint`` wraps what the user's function gives (a FastAPI route, an ASGI app, a WSGI app, or a
server on a local port) and answers one request at a time from whichever thread the runtime runs the
input on: ASGI apps run on the container's event loop, WSGI apps in the input's thread, a local server
through ``http.client``. Every piece but the last goes out as a generator item as soon as it is ready
(streaming, server-sent events); the last is the input's final output.

Stdlib only (3.10-compatible): the image brings its own framework.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from vivace.protocol import web as proto

Emit = Callable[[bytes], None]  # sends one piece that is not the last
Pieces = Iterator[Tuple[bytes, bool]]  # (piece, whether it is the last)
Fetch = Callable[[int], List[Tuple[int, bytes]]]  # a WebSocket client's messages after a sequence number


class WebEndpoint:
    def __init__(self, settings: Dict[str, Any], target: Callable[..., Any], run_coro: Callable[..., Any]):
        self.kind = settings["kind"]
        self.settings = settings
        self.target = target
        self.run_coro = run_coro  # runs a coroutine on the container's event loop, from any thread
        self.app: Any = None
        self.lifespan: Optional[_Lifespan] = None

    # -- start and stop ----------------------------------------------------------------------------
    def start(self) -> None:
        """Build the app once per container (after ``@enter``); a failure here fails the container."""
        if self.kind == "fastapi":
            self.app = _fastapi_app(self.target, self.settings)
        elif self.kind == "server":
            result = self.target()
            if asyncio.iscoroutine(result):
                self.run_coro(result)
            _wait_for_port(int(self.settings["port"]), float(self.settings["startup_timeout"]))
        else:
            app = self.target()
            if asyncio.iscoroutine(app):
                app = self.run_coro(app)
            if not callable(app):
                raise TypeError(f"a {self.kind}_app function must return the app, got {type(app).__name__}")
            self.app = app
        if self.kind in ("fastapi", "asgi"):
            self.lifespan = _Lifespan(self.app)
            self.run_coro(self.lifespan.startup())

    def stop(self) -> None:
        if self.lifespan is not None:
            try:
                self.run_coro(self.lifespan.shutdown())
            except BaseException:
                traceback.print_exc()

    # -- one request -------------------------------------------------------------------------------
    def respond(
        self,
        head: Dict[str, Any],
        body: bytes,
        emit: Emit,
        run_coro: Optional[Callable[..., Any]] = None,
        fetch: Optional[Fetch] = None,
    ) -> bytes:
        """Answer one request: pieces but the last go to ``emit`` as soon as they are made; the last is
        returned. ``run_coro`` runs the app's coroutines (so that cancelling the input cancels them);
        ``fetch(after)`` returns a WebSocket client's messages after ``after`` (blocking, long-poll)."""
        if head.get("websocket"):
            if self.kind != "asgi" or fetch is None:
                return proto.encode_ws_piece([{"type": "websocket.close", "code": 1003}])
            pieces: Pieces = _iter_async(_asgi_ws(self.app, head, fetch), run_coro or self.run_coro)
        elif self.kind == "wsgi":
            pieces = _wsgi(self.app, head, body)
        elif self.kind == "server":
            pieces = _proxy(int(self.settings["port"]), head, body)
        else:
            pieces = _iter_async(_asgi(self.app, head, body), run_coro or self.run_coro)
        for piece, last in pieces:
            if last:
                return piece
            emit(piece)
        return proto.encode_piece(b"")  # the body ended after the last piece sent


# -- ASGI ------------------------------------------------------------------------------------------


def asgi_scope(head: Dict[str, Any]) -> Dict[str, Any]:
    path = head["path"]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": head["method"],
        "scheme": head.get("scheme") or "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": head.get("query", "").encode("latin-1"),
        "root_path": head.get("root_path", ""),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in head["headers"]],
        "client": tuple(head["client"]) if head.get("client") else None,
        "server": tuple(head["server"]) if head.get("server") else None,
        "state": {},
    }


async def _asgi(app: Any, head: Dict[str, Any], body: bytes) -> Any:
    """Run the app on one request; yield response pieces, coalescing what it sends back to back."""
    queue: asyncio.Queue[Dict[str, Any]] = asyncio.Queue()
    sent_body = False
    done = asyncio.Event()

    async def receive() -> Dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the whole body was given: the next message is the end of the exchange
        return {"type": "http.disconnect"}

    async def send(message: Dict[str, Any]) -> None:
        queue.put_nowait(message)

    task = asyncio.ensure_future(app(asgi_scope(head), receive, send))
    status: Optional[int] = None
    headers: List[List[str]] = []
    started = finished = False
    try:
        while not finished:
            messages = await _next_messages(queue, task)
            if messages is None:  # the app returned (or raised) without finishing its response
                break
            chunk = bytearray()
            for msg in messages:
                if msg["type"] == "http.response.start":
                    status = int(msg["status"])
                    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in msg.get("headers", [])]
                elif msg["type"] == "http.response.body":
                    chunk += msg.get("body", b"")
                    if not msg.get("more_body", False):
                        finished = True
            if status is None:
                continue
            if not started or chunk or finished:
                ends = range(0, max(len(chunk), 1), proto.PIECE_SIZE)
                for i in ends:
                    part = bytes(chunk[i : i + proto.PIECE_SIZE])
                    piece = proto.encode_piece(
                        part, None if started else status, None if started else headers
                    )
                    yield piece, finished and i == ends[-1]
                    started = True
        if not finished:
            err = task.exception() if task.done() and not task.cancelled() else None
            if err is not None:
                traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
            end = proto.encode_piece(b"") if started else proto.error_piece(500, "Internal Server Error")
            yield end, True
    finally:
        done.set()
        if not task.done():
            task.cancel()


async def _asgi_ws(app: Any, head: Dict[str, Any], fetch: Fetch) -> Any:
    """Run the app on one WebSocket session: the client's messages come through ``fetch``, the app's
    events go back as pieces; the session ends when either side closes."""
    scope = asgi_scope(head)
    protocols = [
        v.strip() for k, v in head["headers"] if k.lower() == "sec-websocket-protocol" for v in v.split(",")
    ]
    scope.update(type="websocket", scheme="wss" if head.get("scheme") == "https" else "ws",
                 subprotocols=[p for p in protocols if p])  # fmt: skip
    scope.pop("method", None)
    queue: asyncio.Queue[Dict[str, Any]] = asyncio.Queue()
    inbox: List[Dict[str, Any]] = []
    seen = 0
    connected = False

    async def receive() -> Dict[str, Any]:
        nonlocal connected, seen
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        while not inbox:
            for seq, data in await asyncio.get_running_loop().run_in_executor(None, fetch, seen):
                seen = max(seen, seq)
                inbox.append(proto.decode_message(data))
        return inbox.pop(0)

    async def send(message: Dict[str, Any]) -> None:
        queue.put_nowait(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    accepted = closed = False
    try:
        while not closed:
            events = await _next_messages(queue, task)
            if events is None:
                break
            accepted = accepted or any(e["type"] == "websocket.accept" for e in events)
            closed = any(e["type"] == "websocket.close" for e in events)
            yield proto.encode_ws_piece(events), closed
        if not closed:  # the app returned (or raised) without closing
            err = task.exception() if task.done() and not task.cancelled() else None
            if err is not None:
                traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
            code = (1011 if err is not None else 1000) if accepted else 1008
            yield proto.encode_ws_piece([{"type": "websocket.close", "code": code}]), True
    finally:
        if not task.done():
            task.cancel()


async def _next_messages(
    queue: "asyncio.Queue[Dict[str, Any]]", task: "asyncio.Future[Any]"
) -> Optional[List[Dict[str, Any]]]:
    """What the app sent next: every message already queued, so those sent back to back go together;
    None once the app has returned and nothing is left."""
    while True:
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            messages = [getter.result()]
            while not queue.empty():
                messages.append(queue.get_nowait())
            return messages
        getter.cancel()
        if queue.empty():
            return None


class _Lifespan:
    """The ASGI lifespan protocol: startup before the first request, shutdown at container stop. An
    app that does not speak it (raises on the scope) simply has none."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: Optional[asyncio.Queue[Dict[str, Any]]] = None
        self.outbox: Optional[asyncio.Queue[Dict[str, Any]]] = None
        self.task: Optional[asyncio.Future[Any]] = None
        self.supported = True
        self.supported_confirmed = False

    async def startup(self) -> None:
        self.inbox, self.outbox = asyncio.Queue(), asyncio.Queue()
        inbox, outbox = self.inbox, self.outbox

        async def run() -> None:
            try:
                await self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                               inbox.get, outbox.put)  # fmt: skip
            except BaseException:
                if self.supported_confirmed:
                    raise
            if not self.supported_confirmed:  # it raised or returned on the scope: no lifespan
                self.supported = False
                await outbox.put({"type": "lifespan.unsupported"})

        self.task = asyncio.ensure_future(run())
        await inbox.put({"type": "lifespan.startup"})
        reply = await outbox.get()
        if reply["type"] == "lifespan.unsupported":
            return
        self.supported_confirmed = True
        if reply["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the app's startup failed: {reply.get('message', '')}")

    async def shutdown(self) -> None:
        if not self.supported or self.inbox is None or self.outbox is None:
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self.outbox.get(), 10)
        except asyncio.TimeoutError:
            pass


def _iter_async(agen: Any, run_coro: Callable[..., Any]) -> Pieces:
    while True:
        try:
            yield run_coro(agen.__anext__())
        except StopAsyncIteration:
            return


def _fastapi_app(fn: Callable[..., Any], settings: Dict[str, Any]) -> Any:
    try:
        from fastapi import FastAPI
    except ImportError:
        raise ImportError(
            "@fastapi_endpoint needs FastAPI in the image: add .pip_install('fastapi[standard]')"
        ) from None
    docs = bool(settings.get("docs"))
    app = FastAPI(docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)  # fmt: skip
    app.add_api_route("/", fn, methods=[settings["method"]])
    return app


# -- WSGI ------------------------------------------------------------------------------------------


def _wsgi(app: Any, head: Dict[str, Any], body: bytes) -> Pieces:
    """PEP 3333 in the input's thread; the body the app returns streams in pieces."""
    environ: Dict[str, Any] = {
        "REQUEST_METHOD": head["method"],
        "SCRIPT_NAME": head.get("root_path", ""),
        "PATH_INFO": _local_path(head).encode("utf-8").decode("latin-1"),
        "QUERY_STRING": head.get("query", ""),
        "SERVER_NAME": (head.get("server") or ["localhost", 80])[0],
        "SERVER_PORT": str((head.get("server") or ["localhost", 80])[1]),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": (head.get("client") or ["", 0])[0],
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": head.get("scheme") or "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for key, value in head["headers"]:
        name = key.upper().replace("-", "_")
        if name == "CONTENT_TYPE" or name == "CONTENT_LENGTH":
            environ[name] = value
        else:
            name = "HTTP_" + name
            environ[name] = f"{environ[name]},{value}" if name in environ else value
    environ.setdefault("CONTENT_LENGTH", str(len(body)))
    started: List[Any] = []

    def start_response(
        status: str, headers: List[Tuple[str, str]], exc_info: Any = None
    ) -> Callable[..., Any]:
        if exc_info is not None and started and started[0] == "sent":
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return lambda data: None  # the legacy write() callable: unused by modern apps

    try:
        result = app(environ, start_response)
    except BaseException:
        traceback.print_exc()
        yield proto.error_piece(500, "Internal Server Error"), True
        return
    first = True
    whole = isinstance(result, (list, tuple))  # the whole body at once: one piece when it fits
    chunks = [b"".join(result)] if whole else result
    try:
        buf = bytearray()
        for data in chunks:
            buf += data
            while len(buf) > proto.PIECE_SIZE or (buf and not whole):
                n = min(len(buf), proto.PIECE_SIZE)
                yield _wsgi_piece(started, bytes(buf[:n]), first), False
                del buf[:n]
                first = False
        if first and not started:
            yield proto.error_piece(500, "the WSGI app did not call start_response"), True
            return
        yield _wsgi_piece(started, bytes(buf), first), True
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _local_path(head: Dict[str, Any]) -> str:
    """The path below the root path the gateway serves the endpoint at (path routing)."""
    path, root = head["path"], head.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _wsgi_piece(started: List[Any], data: bytes, first: bool) -> bytes:
    if not first:
        return proto.encode_piece(data)
    status = int(str(started[0]).split(" ", 1)[0])
    return proto.encode_piece(data, status, [[str(k), str(v)] for k, v in started[1]])


# -- a server on a local port ----------------------------------------------------------------------


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"nothing listened on port {port} within startup_timeout={timeout:g} s: {err}"
                ) from None
            time.sleep(0.05)


def _proxy(port: int, head: Dict[str, Any], body: bytes) -> Pieces:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=None)
    first = True
    target = _local_path(head) + ("?" + head["query"] if head.get("query") else "")
    try:
        conn.putrequest(head["method"], target, skip_host=True, skip_accept_encoding=True)
        for key, value in head["headers"]:
            if key.lower() not in proto.HOP_BY_HOP and key.lower() != "content-length":
                conn.putheader(key, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.putheader("Connection", "close")
        conn.endheaders(body)
        resp = conn.getresponse()
        headers = [[k, v] for k, v in resp.getheaders() if k.lower() not in proto.HOP_BY_HOP]
        while True:
            data = resp.read1(proto.PIECE_SIZE) if not resp.isclosed() else b""
            done = not data or resp.length == 0  # length: what a sized body has left to read
            if first:
                yield proto.encode_piece(data, resp.status, headers), done
                first = False
            elif data or done:
                yield proto.encode_piece(data), done
            if done:
                return
    except (OSError, http.client.HTTPException) as err:
        sys.stderr.write(f"vivace: the server on port {port} failed a request: {err}\n")
        failed = proto.error_piece(502, f"the server on port {port} failed: {err}")
        yield (failed if first else proto.encode_piece(b"")), True
    finally:
        conn.close()
