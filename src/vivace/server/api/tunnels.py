"""HTTP through a tunnel: one request to a port inside a sandbox, streamed over the worker channel.

The worker opens a TCP connection inside the sandbox's network namespace and exposes it like a process
(``tc-N``: its "stdout" is what the sandbox sends, its "stdin" what we send), so the same offset-based
reads and writes carry it. h11 writes the request (``Connection: close``) and parses the response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from vivace.protocol import sandboxes as proto
from vivace.server.errors import ApiError

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length",
}  # fmt: skip
READ_WAIT = 25.0


class TunnelError(ApiError):
    status, code = 502, "tunnel_failed"


class _Conn:
    def __init__(self, chan: Any, container_id: str, process_id: str) -> None:
        self.chan, self.cid, self.pid = chan, container_id, process_id
        self.sent = 0
        self.received = 0
        self.peer_closed = False

    async def ask(
        self, payload: dict[str, Any], timeout: float, blobs: list[bytes] | None = None
    ) -> dict[str, Any]:
        reply: dict[str, Any] = await self.chan.request(
            {**payload, "container_id": self.cid, "process_id": self.pid}, timeout, blobs or []
        )
        if reply.get("error"):
            raise TunnelError(f"the sandbox's connection failed: {reply['error']}")
        return reply

    async def send(self, data: bytes) -> None:
        """Send bytes on; once the sandbox's server has closed its side (it answered early), the rest is
        dropped: its answer is what matters."""
        for i in range(0, len(data), proto.MAX_CHUNK):
            if self.peer_closed:
                return
            chunk = data[i : i + proto.MAX_CHUNK]
            reply: dict[str, Any] = await self.chan.request(
                {"type": "sb_write", "offset": self.sent, "eof": False, "container_id": self.cid,
                 "process_id": self.pid}, 60, [chunk])  # fmt: skip
            if reply.get("code") == "stdin_closed":
                self.peer_closed = True
                return
            if reply.get("error"):
                raise TunnelError(f"the sandbox's connection failed: {reply['error']}")
            self.sent += len(chunk)

    async def send_eof(self) -> None:
        """Half-close: the sandbox's server reads an end of file and may still answer."""
        reply: dict[str, Any] = await self.chan.request(
            {"type": "sb_write", "offset": self.sent, "eof": True, "container_id": self.cid,
             "process_id": self.pid}, 60)  # fmt: skip
        if reply.get("error") and reply.get("code") != "stdin_closed":
            raise TunnelError(f"the sandbox's connection failed: {reply['error']}")

    async def recv(self) -> bytes:
        """The next bytes from the sandbox; b"" once it closed the connection."""
        while True:
            reply = await self.ask(
                {"type": "sb_read", "stream": "stdout", "offset": self.received, "wait": READ_WAIT,
                 "max": proto.MAX_CHUNK}, READ_WAIT + 30)  # fmt: skip
            data = (reply.get("_data") or [b""])[0]
            self.received = int(reply.get("offset") or 0) + len(data)
            if data or reply.get("eof"):
                return bytes(data)

    async def close(self) -> None:
        try:
            await self.chan.request(
                {"type": "sb_close", "container_id": self.cid, "process_id": self.pid}, 10
            )
        except Exception:  # the connection is gone with its sandbox or worker: nothing to close
            return


async def proxy(request: Request, target: Callable[[Request], Awaitable[tuple[Any, str, int]]]) -> Response:
    chan, cid, port = await target(request)
    reply = await chan.request({"type": "sb_connect", "container_id": cid, "port": port}, 30)
    if reply.get("error"):
        raise TunnelError(f"nothing answers on port {port} in the sandbox: {reply['error']}")
    conn = _Conn(chan, cid, str(reply["process_id"]))
    try:
        client = h11.Connection(h11.CLIENT)
        path = "/" + request.path_params.get("path", "")
        if request.url.query:
            path += "?" + request.url.query
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}]
        headers.append(("host", f"localhost:{port}"))
        headers.append(("connection", "close"))
        length = request.headers.get("content-length")
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        if length is not None:
            headers.append(("content-length", length))
        elif chunked:
            headers.append(("transfer-encoding", "chunked"))
        out = bytearray(client.send(h11.Request(method=request.method, target=path, headers=headers)) or b"")
        if length is not None or chunked:  # a request without either has no body
            async for chunk in request.stream():
                if chunk:
                    out += client.send(h11.Data(data=chunk)) or b""
                    if len(out) >= proto.MAX_CHUNK:
                        await conn.send(bytes(out))
                        out.clear()
        out += client.send(h11.EndOfMessage()) or b""
        await conn.send(bytes(out))  # small requests go in one write
        head = await _next(client, conn)
        if not isinstance(head, h11.Response):
            raise TunnelError(f"the sandbox's server answered with {type(head).__name__}")
    except BaseException:
        await conn.close()
        raise
    out_headers = {
        k.decode(): v.decode("latin-1") for k, v in head.headers if k.decode().lower() not in HOP_BY_HOP
    }

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                event = await _next(client, conn)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return
        finally:
            await conn.close()

    return StreamingResponse(body(), status_code=head.status_code, headers=out_headers)


async def _next(client: h11.Connection, conn: _Conn) -> Any:
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as err:
            raise TunnelError(f"the sandbox's server sent malformed HTTP: {err}") from None
        if event is h11.NEED_DATA:
            client.receive_data(await conn.recv())
            continue
        return event
