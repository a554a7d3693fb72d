"""Request/response over a worker's WebSocket channel (exec, sandbox processes and files).

A message is a JSON text, or a binary frame (``protocol.frames``) where it carries bytes: a JSON header
plus payloads, never base64. Either way the header's ``id`` pairs a reply with its request; a reply's
payloads arrive in ``reply["_data"]``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

from vivace.protocol import frames
from vivace.server.errors import ApiError

_ids = itertools.count(1)


class ChannelError(ApiError):
    status, code = 503, "worker_unreachable"


class WorkerChannel:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def request(
        self, payload: dict[str, Any], timeout: float, blobs: Sequence[bytes] = ()
    ) -> dict[str, Any]:
        rid = next(_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            if blobs:
                await self.ws.send_bytes(frames.encode({**payload, "id": rid}, blobs))
            else:
                await self.ws.send_json({**payload, "id": rid})
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ChannelError(f"the worker did not answer within {timeout:g} s") from None
        finally:
            self.pending.pop(rid, None)

    def deliver(self, msg: Any) -> None:
        if isinstance(msg, dict):
            fut = self.pending.get(msg.get("id", -1))
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def deliver_raw(self, message: dict[str, Any]) -> None:
        """One ASGI ``websocket.receive`` message: a JSON text or a binary frame."""
        import json

        if message.get("bytes") is not None:
            try:
                header, blobs = frames.decode(message["bytes"])
            except frames.FrameError:
                return
            header["_data"] = blobs
            self.deliver(header)
        elif message.get("text") is not None:
            try:
                self.deliver(json.loads(message["text"]))
            except ValueError:
                return

    def fail(self, why: str) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ChannelError(why))
