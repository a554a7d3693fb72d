"""Raw TCP tunnels (``unencrypted_ports``): a listener on this control plane per tunnel, whose connections
are relayed byte for byte to the port inside the sandbox over its worker's channel.

A listener opens when a client first asks for the sandbox's tunnels (``GET .../tunnels``), on the port it
had before if it can (a restarted control plane reopens it there), and closes once the sandbox has
stopped. Like a tunnel URL, the address is the credential: anyone who can reach it reaches the sandbox's
port, as with Modal's unencrypted ports. Listeners bind to ``ServerConfig.tunnel_host`` (the API's own
address by default), so a control plane on loopback exposes nothing further.

Each connection is a ``tc-N`` process on the worker (see ``worker/sandboxes.py``): what the client sends
is its stdin (an end of file is a half-close), what the sandbox sends its stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vivace.protocol import sandboxes as proto

log = logging.getLogger("vivace.server")

SWEEP_INTERVAL = 5.0  # seconds between checks for listeners whose sandbox has stopped
Target = Callable[[str], Awaitable[tuple[Any, str, int]]]  # token -> (channel, container, port)


@dataclass
class _Listener:
    server: asyncio.AbstractServer
    sandbox_id: str
    port: int  # where it listens on this host


class TcpTunnels:
    def __init__(
        self, host: str, target: Target, running: Callable[[list[str]], Awaitable[set[str]]]
    ) -> None:
        self.host = host
        self._target = target  # where a token's connections go, checked per connection
        self._running = running  # which of these sandboxes still run
        self._listeners: dict[str, _Listener] = {}
        self._lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def ensure(self, token: str, sandbox_id: str, prefer: int | None) -> int:
        """The port this host listens on for ``token``, opening a listener if there is none (on
        ``prefer`` when it is free, else on any port)."""
        async with self._lock:
            found = self._listeners.get(token)
            if found is not None:
                return found.port
            handler = functools.partial(self._accept, token)
            try:
                server = await asyncio.start_server(handler, self.host, prefer or 0)
            except OSError:
                if not prefer:
                    raise
                server = await asyncio.start_server(handler, self.host, 0)
            port = int(server.sockets[0].getsockname()[1])
            self._listeners[token] = _Listener(server, sandbox_id, port)
            log.info("tcp tunnel for sandbox %s listening on %s:%d", sandbox_id, self.host, port)
            if self._sweeper is None or self._sweeper.done():
                self._sweeper = asyncio.create_task(self._sweep_loop())
            return port

    def listening(self, token: str) -> int | None:
        found = self._listeners.get(token)
        return found.port if found is not None else None

    async def _accept(self, token: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await self._relay(token, reader, writer)
        except Exception as err:  # one connection's failure is the client's to see (a reset), not ours
            log.info("tcp tunnel connection failed: %s", err)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._conns.discard(task)

    async def _relay(self, token: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from vivace.server.api.tunnels import TunnelError, _Conn

        chan, cid, port = await self._target(token)
        reply = await chan.request({"type": "sb_connect", "container_id": cid, "port": port}, 30)
        if reply.get("error"):
            raise TunnelError(f"nothing answers on port {port} in the sandbox: {reply['error']}")
        conn = _Conn(chan, cid, str(reply["process_id"]))

        async def upstream() -> None:
            while data := await reader.read(proto.MAX_CHUNK):
                await conn.send(data)
            await conn.send_eof()

        async def downstream() -> None:
            while data := await conn.recv():
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        up = asyncio.create_task(upstream())
        try:
            await downstream()  # the sandbox's side closing ends the connection
        finally:
            up.cancel()
            with contextlib.suppress(BaseException):
                await up
            await conn.close()

    async def _sweep_loop(self) -> None:
        while self._listeners:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except Exception:
                log.exception("tcp tunnel sweep failed")

    async def sweep(self) -> None:
        """Close the listeners of sandboxes that stopped."""
        ids = sorted({lst.sandbox_id for lst in self._listeners.values()})
        if not ids:
            return
        running = await self._running(ids)
        for token, lst in list(self._listeners.items()):
            if lst.sandbox_id not in running:
                await self._close(token)

    async def _close(self, token: str) -> None:
        lst = self._listeners.pop(token, None)
        if lst is None:
            return
        lst.server.close()  # not wait_closed: that waits for connections, which end with the sandbox
        log.info("tcp tunnel for sandbox %s on port %d closed", lst.sandbox_id, lst.port)

    async def close(self) -> None:
        for token in list(self._listeners):
            await self._close(token)
        for task in [*self._conns, *([self._sweeper] if self._sweeper else [])]:
            task.cancel()
        for task in [*self._conns, *([self._sweeper] if self._sweeper else [])]:
            with contextlib.suppress(BaseException):
                await task
