"""Container starts and exits, reported to the control plane in order and until delivered.

Metering bills a container from its start to its exit on the store's clock (ADR 0015), so no report may
be lost while the control plane restarts or the network fails, and a late one must still date the event
right: each report says how many seconds ago it happened, by this worker's monotonic clock, measured
again at every try.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from vivace import exception as exc
from vivace.client import ApiClient

log = logging.getLogger("vivace.worker")
RETRY_MAX = 5.0  # seconds between tries at most while the control plane cannot be reached
MAX_PENDING = 100_000


class EventReporter:
    def __init__(self, api: ApiClient, worker_id: Callable[[], str]) -> None:
        self.api = api
        self.worker_id = worker_id
        self._pending: collections.deque[tuple[float, str, dict[str, Any]]] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def report(self, container_id: str, event: str, *, at: float | None = None, **fields: Any) -> None:
        """Queue a report; ``at``: when it happened (``time.monotonic()``; default now)."""
        if len(self._pending) >= MAX_PENDING:
            log.error("dropping the %s report of container %s: %d reports wait", event, container_id,
                      len(self._pending))  # fmt: skip
            return
        ev = {
            "container_id": container_id,
            "event": event,
            **{k: v for k, v in fields.items() if v is not None},
        }
        self._pending.append((time.monotonic() if at is None else at, self.worker_id(), ev))
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        delay = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                at, wid, ev = self._pending[0]
                if await self._send(at, wid, ev):
                    self._pending.popleft()
                    delay = 0.2
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
            self._idle.set()

    async def _send(self, at: float, worker_id: str, ev: dict[str, Any]) -> bool:
        """True when the report is done with (delivered, or refused for good)."""
        body = {"events": [{**ev, "ago": round(max(0.0, time.monotonic() - at), 6)}]}
        try:
            # one try per body: a retry inside the client would resend this "ago", by then too small
            await self.api.post_json(f"/v1/workers/{worker_id}/events", body, retry_for=0.0)
        except (exc.NotFoundError, exc.PermissionDeniedError, exc.InvalidError) as err:
            # the container is unknown or no longer ours (this worker registered again): nothing to date
            log.warning(
                "the control plane refused the %s report of %s: %s", ev["event"], ev["container_id"], err
            )
        except exc.Error as err:
            log.warning(
                "could not report %s of %s yet (will retry): %s", ev["event"], ev["container_id"], err
            )
            return False
        return True

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued report is delivered, up to ``timeout`` seconds; True if they were."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
