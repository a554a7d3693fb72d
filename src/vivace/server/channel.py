"""Request/response over a worker's WebSocket channel (exec now; stdin, tunnels and web later)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from vivace.server.errors import ApiError

_ids = itertools.count(1)


class ChannelError(ApiError):
    status, code = 503, "worker_unreachable"


class WorkerChannel:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def request(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        rid = next(_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
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

    def fail(self, why: str) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ChannelError(why))
