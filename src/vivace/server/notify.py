"""In-process wake-ups: persist first, then wake whoever waits on a key (no sleeping polls).

Keys are strings such as ``inputs:fu-…`` or ``outputs:fc-…``. A waiter takes the current event for a
key before it checks the store, then waits on it; ``wake`` replaces the event, so a wake-up that
happens between the check and the wait is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, key: str) -> asyncio.Event:
        ev = self._events.get(key)
        if ev is None:
            ev = self._events[key] = asyncio.Event()
        return ev

    def wake(self, *keys: str) -> None:
        for key in keys:
            ev = self._events.pop(key, None)
            if ev is not None:
                ev.set()

    def wake_prefix(self, prefix: str) -> None:
        self.wake(*[k for k in self._events if k.startswith(prefix)])

    async def wait(self, ev: asyncio.Event, timeout: float) -> bool:
        if timeout <= 0:
            return ev.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
        return ev.is_set()
