"""Container output shipped to the control plane in batches (every 100 ms or 1,000 lines)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from vivace import exception as exc
from vivace.client import ApiClient

log = logging.getLogger("vivace.worker")
MAX_BATCH = 1000
MAX_BUFFER = 100_000


class LogShipper:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self._buf: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self.dropped = 0

    def add(
        self,
        app_id: str,
        function_id: str | None,
        container_id: str | None,
        input_seq: int | None,
        stream: str,
        line: str,
    ) -> None:
        if len(self._buf) >= MAX_BUFFER:
            self.dropped += 1
            return
        self._buf.append(
            {
                "app_id": app_id,
                "function_id": function_id,
                "container_id": container_id,
                "input_seq": input_seq,
                "stream": stream,
                "ts": time.time(),
                "line": line,
            }
        )
        if len(self._buf) >= MAX_BATCH:
            self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 0.1)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._buf:
            batch, self._buf = self._buf[:MAX_BATCH], self._buf[MAX_BATCH:]
            try:
                await self.api.post_json("/v1/logs", {"lines": batch})
            except exc.Error as err:
                log.warning("could not ship %d log lines: %s", len(batch), err)
                self._buf[:0] = batch
                return
