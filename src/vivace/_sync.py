"""The blocking API over one SDK-owned event loop thread, with an ``.aio`` twin for async callers.

Every network coroutine runs on the SDK loop (its HTTP client lives there). A blocking call submits
the coroutine and waits; ``.aio`` awaits the same coroutine from the caller's own loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def sdk_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None or not _loop.is_running():
            loop = _new_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=run, name="vivace-sdk-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # faster socket and thread hand-offs when installed (the server extra brings it)
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def in_sdk_loop() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    if in_sdk_loop():
        coro.close()
        raise RuntimeError("blocking vivace call made from inside the SDK loop; use the .aio form")
    fut = asyncio.run_coroutine_threadsafe(coro, sdk_loop())
    try:
        return fut.result()
    except KeyboardInterrupt:
        fut.cancel()
        raise


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    if in_sdk_loop():
        return await coro
    fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, sdk_loop())
    return await asyncio.wrap_future(fut)


def iter_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    try:
        while True:
            try:
                yield run_sync(agen.__anext__())  # type: ignore[arg-type]
            except StopAsyncIteration:
                return
    finally:
        closer = getattr(agen, "aclose", None)
        if closer is not None and not in_sdk_loop():
            try:
                run_sync(closer())
            except Exception:
                pass


async def iter_async(agen: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        while True:
            try:
                item: T = await run_async(agen.__anext__())  # type: ignore[arg-type]
            except StopAsyncIteration:
                return
            yield item
    finally:
        closer = getattr(agen, "aclose", None)
        if closer is not None:
            await run_async(closer())


class _Bound(Generic[T]):
    def __init__(self, fn: Callable[..., Awaitable[T]], obj: Any) -> None:
        self._fn = fn
        self._obj = obj
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return run_sync(self._fn(self._obj, *args, **kwargs))  # type: ignore[arg-type]

    async def aio(self, *args: Any, **kwargs: Any) -> T:
        return await run_async(self._fn(self._obj, *args, **kwargs))  # type: ignore[arg-type]


class synchronized(Generic[T]):
    """Decorate an ``async def`` method: ``obj.m(...)`` blocks, ``await obj.m.aio(...)`` does not."""

    def __init__(self, fn: Callable[..., Awaitable[T]]) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: Any = None) -> _Bound[T]:
        return _Bound(self.fn, obj if obj is not None else owner)


class _Twin:
    def __init__(self, sync: Callable[..., Any], aio: Callable[..., Any]) -> None:
        self._sync = sync
        self.aio = aio
        functools.update_wrapper(self, sync)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._sync(*args, **kwargs)


class twin:
    """A blocking method paired with an explicit async form: ``obj.m(...)`` and ``obj.m.aio(...)``.

    For methods whose async form is not simply the blocking one awaited (iterators, generators).
    """

    def __init__(self, sync: Callable[..., Any], aio: Callable[..., Any]) -> None:
        self.sync = sync
        self.aio = aio
        self.__doc__ = sync.__doc__

    def __get__(self, obj: Any, owner: Any = None) -> _Twin:
        return _Twin(self.sync.__get__(obj, owner), self.aio.__get__(obj, owner))
