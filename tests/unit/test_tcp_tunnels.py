"""Raw TCP tunnels on the control plane, against a fake worker channel that behaves like a sandbox's
``tc-N`` connection: bytes relayed both ways, a half-close passed on, listeners closed with the sandbox."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vivace.server.tcp_tunnels import TcpTunnels


class FakeChannel:
    """A connection inside the sandbox whose server answers, after the client's end of file, with what
    it received reversed."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.received = bytearray()
        self.answer = b""
        self.eof = asyncio.Event()
        self.closed = 0
        self.requests: list[str] = []

    async def request(
        self, payload: dict[str, Any], timeout: float, blobs: list[bytes] | None = None
    ) -> dict:
        kind = payload["type"]
        self.requests.append(kind)
        if kind == "sb_connect":
            return {"error": "connection refused"} if self.refuse else {"process_id": "tc-1"}
        if kind == "sb_write":
            assert payload["offset"] == len(self.received)  # nothing lost or sent twice
            self.received += b"".join(blobs or [])
            if payload["eof"]:
                self.answer = b"got:" + bytes(self.received[::-1])
                self.eof.set()
            return {"offset": len(self.received)}
        if kind == "sb_read":
            await asyncio.wait_for(self.eof.wait(), 5)
            data = self.answer[payload["offset"] :][: payload["max"]]
            return {"offset": payload["offset"], "eof": not data, "_data": [data]}
        if kind == "sb_close":
            self.closed += 1
            return {}
        raise AssertionError(kind)


def _tunnels(chan: FakeChannel, running: set[str]) -> TcpTunnels:
    async def target(token: str) -> tuple[Any, str, int]:
        assert token == "tok"
        return chan, "ctr-1", 7000

    async def still(ids: list[str]) -> set[str]:
        return running & set(ids)

    return TcpTunnels("127.0.0.1", target, still)


def test_bytes_flow_both_ways_with_a_half_close() -> None:
    async def go() -> None:
        chan = FakeChannel()
        tunnels = _tunnels(chan, {"sb-1"})
        port = await tunnels.ensure("tok", "sb-1", None)
        assert await tunnels.ensure("tok", "sb-1", None) == port  # one listener per tunnel
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = bytes(range(256)) * 40000  # ~10 MiB, more than one chunk
        writer.write(payload)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer == b"got:" + payload[::-1]
        writer.close()
        await tunnels.close()
        assert chan.closed == 1

    asyncio.run(go())


def test_a_refused_connection_is_closed_and_a_stopped_sandbox_closes_its_listener() -> None:
    async def go() -> None:
        chan = FakeChannel(refuse=True)
        running = {"sb-1"}
        tunnels = _tunnels(chan, running)
        port = await tunnels.ensure("tok", "sb-1", None)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # nothing answers in the sandbox
        writer.close()
        await tunnels.sweep()
        assert tunnels.listening("tok") == port  # still running: still listening
        running.clear()
        await tunnels.sweep()
        assert tunnels.listening("tok") is None
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        again = await tunnels.ensure("tok", "sb-1", port)  # a restarted plane takes its old port back
        assert again == port
        await tunnels.close()

    asyncio.run(go())
