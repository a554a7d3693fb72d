"""The worker's end of the long-lived channel: a WebSocket the control plane sends requests over.

Messages are JSON texts, or binary frames (``protocol.frames``) where bytes travel (sandbox streams,
stdin and files); a reply pairs with its request by ``id`` and uses the same form when it has bytes."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from vivace._version import __version__
from vivace.protocol import frames
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
                    if isinstance(raw, bytes):
                        try:
                            msg, data = frames.decode(raw)
                        except frames.FrameError as err:
                            log.warning("channel: dropped a bad frame: %s", err)
                            continue
                    else:
                        msg, data = json.loads(raw), []
                    task = asyncio.create_task(_answer(agent, ws, msg, data))
                    _inflight.add(task)
                    task.add_done_callback(_inflight.discard)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.debug("channel closed (%s); reconnecting", err)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
        url = url.rsplit("/v1/workers/", 1)[0] + f"/v1/workers/{agent.worker_id}/channel"


async def _answer(agent: Agent, ws: Any, msg: dict[str, Any], data: list[bytes]) -> None:
    from vivace.worker.sandboxes import SandboxRequestError, SandboxSupervisor

    reply: dict[str, Any] = {"id": msg.get("id")}
    out: list[bytes] = []
    try:
        sup = agent.sandbox(msg.get("container_id", ""))
        if sup is None:
            raise SandboxRequestError(
                f"container {msg.get('container_id')} is not running on this worker", "sandbox_not_running"
            )
        kind = msg.get("type")
        if kind == "exec":
            code, stdout, stderr = await sup.runtime.exec(
                sup.spec, list(msg["argv"]), float(msg.get("timeout", 60))
            )
            reply.update(
                returncode=code,
                stdout=stdout.decode("utf-8", "replace"),
                stderr=stderr.decode("utf-8", "replace"),
            )
        elif isinstance(kind, str) and kind.startswith("sb_") and isinstance(sup, SandboxSupervisor):
            result, out = await sup.request(msg, data)
            reply.update(result)
        else:
            raise SandboxRequestError(f"unknown channel request {kind!r} for container {sup.id}")
    except SandboxRequestError as err:
        reply.update(error=str(err), code=err.code)
    except Exception as err:
        log.exception("channel request %s failed", msg.get("type"))
        reply["error"] = str(err) or type(err).__name__
    try:
        await ws.send(frames.encode(reply, out) if out else json.dumps(reply))
    except Exception as err:  # the channel closed meanwhile: the control plane's request fails on its side
        log.debug("channel: could not send a reply: %s", err)
