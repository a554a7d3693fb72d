"""A minimal HTTP/1.1 server on a unix socket, for the container socket.

Containers speak plain HTTP with ``Content-Length`` bodies and keep-alive; nothing else is needed, so
this stays small and has no dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("vivace.worker")
MAX_BODY = 300 * 1024 * 1024


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    409: "Conflict",
    410: "Gone",
    413: "Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class UnixHttpServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        # a container's root may be an unprivileged uid on the host (user namespace): it must be able to
        # connect; the socket's directory is mounted into that one container only
        os.chmod(self.path, 0o666)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                try:
                    resp = await self.handler(req)
                except Exception as err:  # keep the container's connection usable
                    log.exception("container socket handler failed")
                    resp = HttpResponse(500, str(err).encode(), "text/plain")
                head = (
                    f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Status')}\r\n"
                    f"Content-Type: {resp.content_type}\r\nContent-Length: {len(resp.body)}\r\n\r\n"
                )
                writer.write(head.encode() + resp.body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise ConnectionError("bad request line")
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    if n > MAX_BODY:
        raise ConnectionError("body too large")
    body = await reader.readexactly(n) if n else b""
    return HttpRequest(parts[0], parts[1], headers, body)
