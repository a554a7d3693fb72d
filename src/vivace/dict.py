"""``vivace.Dict``: a distributed dictionary of cloudpickled keys and values (Modal's ``modal.Dict``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from vivace._sdk.connection import get_client
from vivace._sdk.objects import StorageObject, _Objects
from vivace._sdk.serialization import deserialize, serialize
from vivace._sync import iter_async, iter_sync, run_sync, synchronized, twin

_MISSING = object()


class Dict(StorageObject):
    """Keys compare by their pickle; values are any picklable object up to 1 MiB pickled.

    ``d = vivace.Dict.from_name("cache", create_if_missing=True)``; ``d["k"] = v``; ``d.get("k")``;
    ``d.put("lock", me, skip_if_exists=True)`` returns whether this call wrote it (atomic).
    """

    _kind = "dict"
    objects = _Objects("dict")

    async def _put_many(self, pairs: list[tuple[Any, Any]], skip_if_exists: bool) -> int:
        blobs = [b for k, v in pairs for b in (serialize(k), serialize(v))]
        did = await self._resolve()
        api = await get_client()
        resp = await api.post_frames(f"/v1/dicts/{did}/put", {"skip_if_exists": skip_if_exists}, blobs)
        return int(resp.json()["written"])

    async def _fetch(self, key: Any, pop: bool) -> Any:
        did = await self._resolve()
        api = await get_client()
        resp = await api.post_frames(f"/v1/dicts/{did}/get", {"pop": pop}, [serialize(key)])
        header, blobs = api.decode_frames(resp)
        return deserialize(blobs[0]) if header["found"] else _MISSING

    @synchronized
    async def get(self, key: Any, default: Any = None) -> Any:
        value = await self._fetch(key, pop=False)
        return default if value is _MISSING else value

    @synchronized
    async def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        """Write ``key``; with ``skip_if_exists`` only if absent. Returns whether it was written."""
        return await self._put_many([(key, value)], skip_if_exists) == 1

    @synchronized
    async def update(self, other: Mapping[Any, Any] | None = None, /, **kwargs: Any) -> None:
        pairs = list(dict(other or {}, **kwargs).items())
        for start in range(0, len(pairs), 1000):
            await self._put_many(pairs[start : start + 1000], False)

    @synchronized
    async def pop(self, key: Any, default: Any = _MISSING) -> Any:
        value = await self._fetch(key, pop=True)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    @synchronized
    async def contains(self, key: Any) -> bool:
        return await self._fetch(key, pop=False) is not _MISSING

    @synchronized
    async def len(self) -> int:
        did = await self._resolve()
        api = await get_client()
        return int((await api.get_json(f"/v1/dicts/{did}/len"))["len"])

    @synchronized
    async def clear(self) -> None:
        did = await self._resolve()
        api = await get_client()
        await api.post_json(f"/v1/dicts/{did}/clear")

    async def _pages(self) -> AsyncIterator[tuple[Any, Any]]:
        did = await self._resolve()
        api = await get_client()
        after = ""
        while True:
            resp = await api.post_frames(f"/v1/dicts/{did}/items", {"after": after, "limit": 1000}, [])
            header, blobs = api.decode_frames(resp)
            for i in range(0, len(blobs), 2):
                yield deserialize(blobs[i]), deserialize(blobs[i + 1])
            if header["cursor"] is None or header["n"] < 1000:
                return
            after = header["cursor"]

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter_sync(self._pages())

    async def _keys_aio(self) -> AsyncIterator[Any]:
        async for k, _ in iter_async(self._pages()):
            yield k

    async def _values_aio(self) -> AsyncIterator[Any]:
        async for _, v in iter_async(self._pages()):
            yield v

    def _items_aio(self) -> AsyncIterator[tuple[Any, Any]]:
        return iter_async(self._pages())

    def keys(self) -> Iterator[Any]:
        return (k for k, _ in self.items())

    def values(self) -> Iterator[Any]:
        return (v for _, v in self.items())

    items = twin(items, _items_aio)  # type: ignore[assignment]
    keys = twin(keys, _keys_aio)  # type: ignore[assignment]
    values = twin(values, _values_aio)  # type: ignore[assignment]

    def __getitem__(self, key: Any) -> Any:
        value = run_sync(self._fetch(key, pop=False))
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        run_sync(self._put_many([(key, value)], False))

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    def __contains__(self, key: Any) -> bool:
        return bool(self.contains(key))

    def __len__(self) -> int:
        return int(self.len())
