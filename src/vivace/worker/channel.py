"""The worker's end of the long-lived channel: a WebSocket the control plane sends requests over."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from vivace._version import __version__
from vivace.protocol.versions import VERSION_HEADER

if TYPE_CHECKING:
    from vivace.worker.agent import Agent

log = logging.getLogger("vivace.worker")
_inflight: set[asyncio.Task[None]] = set()


async def run_channel(agent: Agent) -> None:
    import websockets

    url = agent.api.base_url.replace("http://", "ws://").replace("https://", "wss://")
    url += f"/v1/workers/{agent.worker_id}/channel"
    headers = {"authorization": agent.api.creds.header(), VERSION_HEADER: __version__}
    delay = 0.2
    while True:
        try:
            async with websockets.connect(url, additional_headers=headers, max_size=64 * 1024 * 1024) as ws:
                delay = 0.2
                async for raw in ws:
                    msg = json.loads(raw)
                    task = asyncio.create_task(_answer(agent, ws, msg))
                    _inflight.add(task)
                    task.add_done_callback(_inflight.discard)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.debug("channel closed (%s); reconnecting", err)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
        url = url.rsplit("/v1/workers/", 1)[0] + f"/v1/workers/{agent.worker_id}/channel"


async def _answer(agent: Agent, ws: Any, msg: dict[str, Any]) -> None:
    reply: dict[str, Any] = {"id": msg.get("id")}
    try:
        if msg.get("type") != "exec":
            raise ValueError(f"unknown channel request {msg.get('type')!r}")
        sup = agent.containers.get(msg["container_id"])
        if sup is None:
            raise ValueError(f"container {msg['container_id']} is not running on this worker")
        code, out, err = await sup.runtime.exec(sup.spec, list(msg["argv"]), float(msg.get("timeout", 60)))
        reply.update(
            returncode=code, stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace")
        )
    except Exception as err:
        reply["error"] = str(err)
    await ws.send(json.dumps(reply))
