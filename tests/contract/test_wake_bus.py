"""Wake-ups cross control-plane replicas that share one Postgres (LISTEN/NOTIFY): a put through one
replica ends a Queue long-poll held by another, and a worker event on one wakes the other's waiters."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from vivace.server.config import ServerConfig
from vivace.server.plane import ControlPlane
from vivace.server.services import storage
from vivace.testing.postgres import create_database

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def test_a_put_on_one_replica_wakes_a_getter_on_another(pg_server, tmp_path: Path) -> None:
    dsn = create_database(pg_server.dsn, f"t_{uuid.uuid4().hex[:16]}")

    def config() -> ServerConfig:
        return ServerConfig(store_url=dsn, blob_dir=str(tmp_path / "blobs"), tick=0.5)

    async def scenario() -> tuple[bool, bool, bool, list[bytes]]:
        a, b = ControlPlane(config()), ControlPlane(config())
        await a.start()
        await b.start()
        try:
            assert a.notifier.bus is not None and b.notifier.bus is not None
            qid = await a.store.write(lambda tx: storage.create(tx, "queue", "shared"))
            # b holds a long-poll: it takes its event before checking, as the get route does
            waiting = b.notifier.event(f"queue:{qid}")
            untouched = b.notifier.event("queue:another")
            await a.store.write(lambda tx: storage.queue_put(tx, qid, [b"item"]))
            a.notifier.wake(f"queue:{qid}")
            woken = await b.notifier.wait(waiting, 30)
            got = await b.store.write(lambda tx: storage.queue_get(tx, qid, 1))
            # a prefix wake (a worker came or went) reaches every matching waiter of the other replica
            inputs = a.notifier.event("inputs:fu-x")
            b.notifier.wake_prefix("inputs:")
            prefix_woken = await a.notifier.wait(inputs, 30)
            return woken, prefix_woken, untouched.is_set(), got
        finally:
            await a.stop()
            await b.stop()

    woken, prefix_woken, other_set, got = asyncio.run(scenario())
    assert woken and prefix_woken
    assert not other_set  # only the keys woken, nothing else
    assert got == [b"item"]


def test_sqlite_planes_have_no_bus(tmp_path: Path) -> None:
    async def scenario() -> object:
        plane = ControlPlane(
            ServerConfig(store_url=f"sqlite:///{tmp_path / 'db'}", blob_dir=str(tmp_path / "b"))
        )
        await plane.start()
        try:
            return plane.notifier.bus
        finally:
            await plane.stop()

    assert asyncio.run(scenario()) is None
