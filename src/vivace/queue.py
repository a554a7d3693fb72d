"""``vivace.Queue``: a distributed FIFO queue of cloudpickled items with partitions (``modal.Queue``)."""

from __future__ import annotations

import queue as std_queue
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from vivace import exception as exc
from vivace._sdk.connection import get_client
from vivace._sdk.objects import StorageObject, _Objects
from vivace._sdk.serialization import deserialize, serialize
from vivace._sync import iter_async, iter_sync, synchronized, twin
from vivace.protocol import objects as limits

SERVER_WAIT = 50.0
"""Seconds one blocking request waits at most (the server allows 60); longer waits ask again."""


class Queue(StorageObject):
    """``q = vivace.Queue.from_name("jobs", create_if_missing=True)``; ``q.put(x)``; ``q.get(timeout=5)``.

    Each item goes to exactly one getter, however many containers pull. A partition lives until
    ``partition_ttl`` seconds after its last put.
    """

    _kind = "queue"
    objects = _Objects("queue")

    async def _put(self, values: list[Any], partition: str | None, partition_ttl: float) -> None:
        _check_partition(partition)
        blobs = [serialize(v) for v in values]
        qid = await self._resolve()
        api = await get_client()
        for start in range(0, len(blobs), limits.MAX_BATCH):
            header = {"partition": partition, "partition_ttl": partition_ttl}
            await api.post_frames(f"/v1/queues/{qid}/put", header, blobs[start : start + limits.MAX_BATCH])

    @synchronized
    async def put(
        self, v: Any, block: bool = True, timeout: float | None = None, *, partition: str | None = None,
        partition_ttl: float = limits.DEFAULT_PARTITION_TTL,
    ) -> None:  # fmt: skip
        """Append ``v`` (a queue is never full here, so ``block`` and ``timeout`` never wait)."""
        del block, timeout
        await self._put([v], partition, partition_ttl)

    @synchronized
    async def put_many(
        self, vs: list[Any], block: bool = True, timeout: float | None = None, *, partition: str | None = None,
        partition_ttl: float = limits.DEFAULT_PARTITION_TTL,
    ) -> None:  # fmt: skip
        del block, timeout
        await self._put(list(vs), partition, partition_ttl)

    async def _take(self, n: int, block: bool, timeout: float | None, partition: str | None) -> list[Any]:
        _check_partition(partition)
        if not 1 <= n <= limits.MAX_BATCH:
            raise exc.InvalidError(f"n_values must be within 1..{limits.MAX_BATCH}, not {n}")
        if timeout is not None and timeout < 0:
            raise exc.InvalidError(f"timeout must be at least 0, not {timeout}")
        qid = await self._resolve()
        api = await get_client()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.0
            if block:
                left = SERVER_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
                wait = min(SERVER_WAIT, left)
            body = {"n": n, "partition": partition, "wait": wait}
            resp = await api.request("POST", f"/v1/queues/{qid}/get", json_body=body, timeout=wait + 30.0)
            _, blobs = api.decode_frames(resp)
            if blobs or not block or (deadline is not None and time.monotonic() >= deadline):
                return [deserialize(b) for b in blobs]

    @synchronized
    async def get(
        self, block: bool = True, timeout: float | None = None, *, partition: str | None = None
    ) -> Any:
        """The next item. Without ``block``, ``None`` when empty; after ``timeout`` seconds, ``queue.Empty``."""
        items = await self._take(1, block, timeout, partition)
        if items:
            return items[0]
        if block:
            raise std_queue.Empty(f"no item arrived within {timeout} seconds")
        return None

    @synchronized
    async def get_many(
        self, n_values: int, block: bool = True, timeout: float | None = None, *, partition: str | None = None
    ) -> list[Any]:
        """Up to ``n_values`` items, waiting (if ``block``) for at least one; ``[]`` after ``timeout``."""
        return await self._take(n_values, block, timeout, partition)

    @synchronized
    async def len(self, *, partition: str | None = None, total: bool = False) -> int:
        _check_partition(partition)
        qid = await self._resolve()
        api = await get_client()
        out = await api.post_json(f"/v1/queues/{qid}/len", {"partition": partition, "total": total})
        return int(out["len"])

    @synchronized
    async def clear(self, *, partition: str | None = None, all: bool = False) -> None:
        _check_partition(partition)
        qid = await self._resolve()
        api = await get_client()
        await api.post_json(f"/v1/queues/{qid}/clear", {"partition": partition, "all": all})

    @synchronized
    async def peek(self, n: int = 1, *, partition: str | None = None) -> list[Any]:
        """The first ``n`` items, left in place."""
        _check_partition(partition)
        qid = await self._resolve()
        api = await get_client()
        body = {"n": n, "partition": partition, "peek": True}
        _, blobs = api.decode_frames(await api.request("POST", f"/v1/queues/{qid}/get", json_body=body))
        return [deserialize(b) for b in blobs]

    async def _iterate(self, partition: str | None, item_poll_timeout: float) -> AsyncIterator[Any]:
        while True:
            items = await self._take(1, item_poll_timeout > 0, item_poll_timeout, partition)
            if not items:
                return
            yield items[0]

    def iterate(self, *, partition: str | None = None, item_poll_timeout: float = 0.0) -> Iterator[Any]:
        """Take items until none arrives within ``item_poll_timeout`` seconds."""
        return iter_sync(self._iterate(partition, item_poll_timeout))

    def _iterate_aio(
        self, *, partition: str | None = None, item_poll_timeout: float = 0.0
    ) -> AsyncIterator[Any]:
        return iter_async(self._iterate(partition, item_poll_timeout))

    iterate = twin(iterate, _iterate_aio)  # type: ignore[assignment]

    def __len__(self) -> int:
        return int(self.len())


def _check_partition(partition: str | None) -> None:
    problem = limits.partition_problem(partition)
    if problem:
        raise exc.InvalidError(problem)
