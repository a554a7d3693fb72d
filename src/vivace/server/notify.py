"""In-process wake-ups: persist first, then wake whoever waits on a key (no sleeping polls).

Keys are strings such as ``inputs:fu-…`` or ``outputs:fc-…``. A waiter takes the current event for a
key before it checks the store, then waits on it; ``wake`` replaces the event, so a wake-up that
happens between the check and the wait is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger("vivace.server")


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.bus: PgWakeBus | None = None  # other replicas, where there are any (Postgres)

    def event(self, key: str) -> asyncio.Event:
        ev = self._events.get(key)
        if ev is None:
            ev = self._events[key] = asyncio.Event()
        return ev

    def wake(self, *keys: str) -> None:
        self._wake_here(keys)
        if self.bus is not None and keys:
            self.bus.publish(list(keys))

    def wake_prefix(self, prefix: str) -> None:
        self._wake_here([k for k in self._events if k.startswith(prefix)])
        if self.bus is not None:
            self.bus.publish(["*" + prefix])

    def _wake_here(self, keys: Any) -> None:
        for key in keys:
            ev = self._events.pop(key, None)
            if ev is not None:
                ev.set()

    def from_peer(self, items: list[str]) -> None:
        """Keys (or ``*prefix``es) another replica woke."""
        for item in items:
            if item.startswith("*"):
                self._wake_here([k for k in self._events if k.startswith(item[1:])])
            else:
                self._wake_here([item])

    async def wait(self, ev: asyncio.Event, timeout: float) -> bool:
        if timeout <= 0:
            return ev.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
        return ev.is_set()


class PgWakeBus:
    """Wake-ups across control-plane replicas that share one Postgres: what one replica wakes, every
    other replica wakes too (a put on one replica ends a ``Queue.get`` long-poll held by another).

    Postgres ``LISTEN``/``NOTIFY`` on channel ``vivace_wake``, on two connections of its own: a sender
    thread that batches keys into notifications (``NOTIFY`` is delivered only after it commits, and it
    is sent after the store's commit, so a woken waiter finds what it was woken for), and a listener
    thread that hands peers' keys to ``deliver`` on the event loop. A replica ignores its own messages.
    Lost connections are reopened; a wake-up lost meanwhile costs a waiter at most its long-poll's wait.
    """

    CHANNEL = "vivace_wake"
    MAX_PAYLOAD = 7000  # bytes per notification (Postgres allows just under 8000)

    def __init__(self, dsn: str, deliver: Any, loop: asyncio.AbstractEventLoop) -> None:
        import secrets
        import threading
        from queue import SimpleQueue

        self.dsn = dsn
        self.deliver = deliver
        self.loop = loop
        self.replica = secrets.token_hex(6)
        self._out: SimpleQueue[str | None] = SimpleQueue()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._threads = [
            threading.Thread(target=self._listen, name="vivace-wake-listen", daemon=True),
            threading.Thread(target=self._send, name="vivace-wake-send", daemon=True),
        ]

    def start(self, timeout: float = 10.0) -> None:
        for t in self._threads:
            t.start()
        self._listening.wait(timeout)  # peers' wake-ups from here on reach this replica

    def publish(self, items: list[str]) -> None:
        for item in items:
            self._out.put(item)

    def close(self) -> None:
        self._stop.set()
        self._out.put(None)
        for t in self._threads:
            t.join(timeout=5)

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)

    def _send(self) -> None:
        conn = None
        while not self._stop.is_set():
            first = self._out.get()
            if first is None:
                break
            batch = {first}
            while not self._out.empty() and len(batch) < 1000:
                item = self._out.get()
                if item is None:
                    self._stop.set()
                    break
                batch.add(item)
            try:
                if conn is None:
                    conn = self._connect()
                for payload in self._payloads(sorted(batch)):
                    conn.execute("SELECT pg_notify(%s, %s)", (self.CHANNEL, payload))
            except Exception as err:  # the next batch reconnects
                log.warning("cross-replica wake-ups: cannot notify (%s); reconnecting", err)
                with contextlib.suppress(Exception):
                    conn.close()  # type: ignore[union-attr]
                conn = None
                self._stop.wait(1.0)
        with contextlib.suppress(Exception):
            if conn is not None:
                conn.close()

    def _payloads(self, items: list[str]) -> list[str]:
        out, current = [], self.replica
        for item in items:
            if len(current) + len(item) + 1 > self.MAX_PAYLOAD:
                out.append(current)
                current = self.replica
            current += "\n" + item
        out.append(current)
        return out

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    self._listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            sender, _, body = note.payload.partition("\n")
                            if sender != self.replica and body:
                                self.loop.call_soon_threadsafe(self.deliver, body.split("\n"))
            except Exception as err:
                if self._stop.is_set():
                    return
                log.warning("cross-replica wake-ups: listener lost its connection (%s); reconnecting", err)
                self._stop.wait(1.0)
