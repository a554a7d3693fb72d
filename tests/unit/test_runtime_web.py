"""The container's side of web endpoints, without a cluster: ASGI apps stream their pieces (what they
send back to back goes in one), a failing app answers 500, lifespan runs, WSGI apps and a server on a
local port answer, and the path below the gateway's root path is what WSGI and local servers see."""

from __future__ import annotations

import asyncio
import http.server
import threading
from typing import Any

import pytest

from vivace.protocol import web as proto
from vivace.runtime.web import WebEndpoint

_LOOP = asyncio.new_event_loop()


def _run(coro: Any) -> Any:
    return _LOOP.run_until_complete(coro)  # one loop for every coroutine, as the runtime has


def _request(path: str = "/", body: bytes = b"", root: str = "", method: str = "GET") -> dict[str, Any]:
    head, _ = proto.decode_request(
        proto.encode_request(method, path, b"q=1", [("x-h", "v")], body, root_path=root)
    )
    return head


def _answer(endpoint: WebEndpoint, head: dict[str, Any], body: bytes = b"") -> list[tuple[Any, ...]]:
    sent: list[bytes] = []
    last = endpoint.respond(head, body, sent.append)
    return [proto.decode_piece(p) for p in [*sent, last]]


def _asgi_endpoint(app: Any) -> WebEndpoint:
    endpoint = WebEndpoint({"kind": "asgi"}, lambda: app, _run)
    endpoint.start()
    return endpoint


def test_an_asgi_response_sent_at_once_is_one_piece_and_a_stream_is_several() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        msg = await receive()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-path", scope["path"].encode())]}
        )
        if scope["path"] == "/stream":
            for i in range(3):
                await send({"type": "http.response.body", "body": f"{i};".encode(), "more_body": True})
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"echo:" + msg["body"]})

    endpoint = _asgi_endpoint(app)
    assert _answer(endpoint, _request("/one"), b"abc") == [(200, [("x-path", "/one")], b"echo:abc")]
    pieces = _answer(endpoint, _request("/stream"))
    assert pieces[0][0] == 200 and len(pieces) >= 3
    assert b"".join(p[2] for p in pieces) == b"0;1;2;"
    assert all(p[0] is None for p in pieces[1:])


def test_an_app_that_fails_before_answering_gives_500_and_a_big_body_is_cut_in_pieces() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return  # returns without speaking the protocol: no lifespan
        if scope["path"] == "/fail":
            raise ValueError("broken")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * (proto.PIECE_SIZE * 2 + 5)})

    endpoint = _asgi_endpoint(app)
    assert _answer(endpoint, _request("/fail")) == [
        (500, [("content-type", "text/plain; charset=utf-8")], b"Internal Server Error\n")
    ]
    pieces = _answer(endpoint, _request("/big"))
    assert [len(p[2]) for p in pieces] == [proto.PIECE_SIZE, proto.PIECE_SIZE, 5]


def test_lifespan_startup_runs_before_requests_and_shutdown_at_stop() -> None:
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                events.append(msg["type"])
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    endpoint = _asgi_endpoint(app)
    assert events == ["lifespan.startup"]
    assert _answer(endpoint, _request())[0][0] == 204
    endpoint.stop()
    assert events == ["lifespan.startup", "lifespan.shutdown"]


def test_a_failed_startup_fails_the_container() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no model"})

    with pytest.raises(RuntimeError, match="no model"):
        _asgi_endpoint(app)


def test_wsgi_apps_see_the_path_below_their_script_name() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        seen = f"{environ['SCRIPT_NAME']}|{environ['PATH_INFO']}|{environ['QUERY_STRING']}|{environ['HTTP_X_H']}|"
        start_response("202 Accepted", [("X-Kind", "wsgi")])
        return [seen.encode(), body]

    endpoint = WebEndpoint({"kind": "wsgi"}, lambda: app, _run)
    endpoint.start()
    assert _answer(endpoint, _request("/web/x/a/b", b"data", root="/web/x"), b"data") == [
        (202, [("X-Kind", "wsgi")], b"/web/x|/a/b|q=1|v|data")
    ]


def test_a_web_server_on_a_local_port_answers_through_the_endpoint() -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["content-length"])
            data = self.rfile.read(length)
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.end_headers()
            self.wfile.write(self.path.encode() + b" " + data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        endpoint = WebEndpoint({"kind": "server", "port": port, "startup_timeout": 5.0}, lambda: None, _run)
        endpoint.start()
        pieces = _answer(endpoint, _request("/web/x/p", b"hi", root="/web/x", method="POST"), b"hi")
        assert pieces[0][0] == 200 and b"".join(p[2] for p in pieces) == b"/p?q=1 hi"
    finally:
        server.shutdown()
        server.server_close()


def test_a_web_server_that_never_listens_fails_its_start() -> None:
    endpoint = WebEndpoint({"kind": "server", "port": 1, "startup_timeout": 0.3}, lambda: None, _run)
    with pytest.raises(TimeoutError, match="nothing listened on port 1"):
        endpoint.start()


def test_each_piece_goes_out_before_the_app_makes_the_next() -> None:
    released = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("none")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.wait_for(released.wait(), 5)  # only the test, once it has the first piece, releases it
        await send({"type": "http.response.body", "body": b"second"})

    endpoint = _asgi_endpoint(app)
    sent: list[bytes] = []

    def emit(piece: bytes) -> None:
        sent.append(piece)
        released.set()

    last = endpoint.respond(_request(), b"", emit)
    assert [proto.decode_piece(p)[2] for p in sent] == [b"first"]
    assert proto.decode_piece(last) == (None, [], b"second")


def test_a_websocket_session_gets_the_clients_messages_and_sends_events_back() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("none")
        assert scope["type"] == "websocket" and scope["subprotocols"] == ["v1", "v2"]
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "subprotocol": "v2"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return  # returns without a close of its own
            await send({"type": "websocket.send", "bytes": msg["bytes"] * 2} if "bytes" in msg
                       else {"type": "websocket.send", "text": msg["text"].upper()})  # fmt: skip

    client = [
        proto.encode_message({"type": "websocket.receive", "text": "hi"}),
        proto.encode_message({"type": "websocket.receive", "bytes": b"\x01"}),
        proto.encode_message({"type": "websocket.disconnect", "code": 1001}),
    ]
    asked: list[int] = []

    def fetch(after: int) -> list[tuple[int, bytes]]:
        asked.append(after)
        return [(after + 1, client[after])] if after < len(client) else []

    endpoint = _asgi_endpoint(app)
    head, _ = proto.decode_request(
        proto.encode_request("GET", "/ws", b"", [("sec-websocket-protocol", "v1, v2")], b"", websocket=True)
    )
    sent: list[bytes] = []
    last = endpoint.respond(head, b"", sent.append, fetch=fetch)
    events = [e for p in [*sent, last] for e in proto.decode_ws_piece(p)]
    assert events == [
        {"type": "websocket.accept", "subprotocol": "v2", "headers": []},
        {"type": "websocket.send", "text": "HI"},
        {"type": "websocket.send", "blob": 0, "bytes": b"\x01\x01"},
        {"type": "websocket.close", "code": 1000, "reason": ""},
    ]
    assert asked == [0, 1, 2]
    wsgi = WebEndpoint({"kind": "wsgi"}, lambda: lambda e, s: [], _run)
    assert proto.decode_ws_piece(wsgi.respond(head, b"", sent.append, fetch=fetch)) == [
        {"type": "websocket.close", "code": 1003, "reason": ""}
    ]
