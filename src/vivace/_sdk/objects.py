"""What Dict and Queue share: a name or an id, resolved lazily, passed to remote functions by id."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, TypeVar

from vivace import exception as exc
from vivace._sdk.connection import get_client
from vivace._sync import run_sync, sdk_loop
from vivace.protocol import objects as limits

HEARTBEAT_S = 30.0
"""How often an ephemeral object's client says it is still in use."""

ObjT = TypeVar("ObjT", bound="StorageObject")


class StorageObject:
    """A named or ephemeral storage object. ``from_name`` is lazy: the lookup happens on first use."""

    _kind: ClassVar[str]

    def __init__(
        self, *, name: str | None = None, object_id: str | None = None, create: bool = False
    ) -> None:
        self._name = name
        self._object_id = object_id
        self._create = create

    @classmethod
    def from_name(
        cls: type[ObjT], name: str, *, create_if_missing: bool = False, environment_name: str | None = None
    ) -> ObjT:
        problem = limits.name_problem(name)
        if problem:
            raise exc.InvalidError(problem)
        del environment_name  # one environment per control plane
        return cls(name=name, create=create_if_missing)

    @classmethod
    def from_id(cls: type[ObjT], object_id: str) -> ObjT:
        return cls(object_id=object_id)

    @property
    def object_id(self) -> str:
        return run_sync(self._resolve())

    @property
    def name(self) -> str | None:
        return self._name

    async def _resolve(self) -> str:
        if self._object_id is None:
            api = await get_client()
            body = {"name": self._name, "create_if_missing": self._create}
            out = await api.post_json(f"/v1/objects/{self._kind}/lookup", body)
            self._object_id = str(out["object_id"])
        return self._object_id

    @classmethod
    @contextlib.contextmanager
    def ephemeral(cls: type[ObjT]) -> Iterator[ObjT]:
        """An object without a name that lives for the block (and is deleted after it)."""
        obj, beat = run_sync(cls._open_ephemeral())
        try:
            yield obj
        finally:
            run_sync(cls._close_ephemeral(obj, beat))

    @classmethod
    @contextlib.asynccontextmanager
    async def _ephemeral_aio(cls: type[ObjT]) -> AsyncIterator[ObjT]:
        obj, beat = await cls._open_ephemeral()
        try:
            yield obj
        finally:
            await cls._close_ephemeral(obj, beat)

    @classmethod
    async def _open_ephemeral(cls: type[ObjT]) -> tuple[ObjT, asyncio.Future[None]]:
        api = await get_client()
        out = await api.post_json(f"/v1/objects/{cls._kind}/ephemeral")
        obj = cls(object_id=str(out["object_id"]))

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_S)
                with contextlib.suppress(exc.Error):
                    await api.post_json(f"/v1/ephemeral/{obj._object_id}/heartbeat")

        beat = asyncio.run_coroutine_threadsafe(heartbeat(), sdk_loop())
        return obj, beat  # type: ignore[return-value]

    @staticmethod
    async def _close_ephemeral(obj: StorageObject, beat: Any) -> None:
        beat.cancel()
        api = await get_client()
        with contextlib.suppress(exc.NotFoundError):
            await api.request("DELETE", f"/v1/ephemeral/{obj._object_id}")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # passed to a remote function as what it is: an id, or (not yet looked up) a name to look up there
        return (_rebuild, (type(self), self._object_id, self._name, self._create))

    def __repr__(self) -> str:
        what = self._name if self._name else self._object_id or "?"
        return f"{type(self).__name__}({what!r})"


def _rebuild(
    cls: type[StorageObject], object_id: str | None, name: str | None, create: bool
) -> StorageObject:
    return cls(name=name, object_id=object_id, create=create)


class _Objects:
    """``Dict.objects`` / ``Queue.objects``: create, list and delete named objects."""

    def __init__(self, kind: str) -> None:
        self._kind = kind

    def create(self, name: str, *, allow_existing: bool = False) -> None:
        problem = limits.name_problem(name)
        if problem:
            raise exc.InvalidError(problem)
        run_sync(self._create(name, allow_existing))

    async def _create(self, name: str, allow_existing: bool) -> None:
        api = await get_client()
        if allow_existing:
            await api.post_json(f"/v1/objects/{self._kind}/lookup", {"name": name, "create_if_missing": True})
            return
        try:
            await api.post_json(f"/v1/objects/{self._kind}", {"name": name})
        except exc.ConflictError as err:
            raise exc.AlreadyExistsError(str(err)) from None

    def list(self) -> list[str]:
        async def go() -> list[str]:
            api = await get_client()
            out = await api.get_json(f"/v1/objects/{self._kind}")
            return [o["name"] for o in out["objects"]]

        return run_sync(go())

    def delete(self, name: str, *, allow_missing: bool = False) -> None:
        async def go() -> None:
            api = await get_client()
            try:
                await api.request("DELETE", f"/v1/objects/{self._kind}/{name}")
            except exc.NotFoundError:
                if not allow_missing:
                    raise

        run_sync(go())
