"""The storage operations timed by ``benchmarks/storage.py``, one at a time, on any Dict-like and
Queue-like pair. Standard library only: Vivace containers import it by name."""

from __future__ import annotations

import time
from typing import Any

VALUE = b"v" * 100
"""Every value and item: 100 bytes (before pickling)."""


def run_ops(d: Any, q: Any, n: int) -> dict[str, float]:
    """Operations per second for ``d[k] = v``, ``d[k]``, ``q.put(v)`` and ``q.get()``, ``n`` of each."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(n):
        d[f"k{i}"] = VALUE
    out["dict_put"] = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n):
        if d[f"k{i}"] != VALUE:
            raise AssertionError(f"k{i} read back wrong")
    out["dict_get"] = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n):
        q.put(VALUE)
    out["queue_put"] = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n):
        if q.get() != VALUE:
            raise AssertionError("queue item read back wrong")
    out["queue_get"] = n / (time.perf_counter() - start)
    return out


class RedisDict:
    """``d[k] = v`` / ``d[k]`` over Redis SET/GET, values pickled as Vivace's are."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    def __setitem__(self, key: str, value: Any) -> None:
        import pickle

        self.client.set(self.prefix + key, pickle.dumps(value))

    def __getitem__(self, key: str) -> Any:
        import pickle

        return pickle.loads(self.client.get(self.prefix + key))


class RedisQueue:
    """``put``/``get`` over Redis RPUSH/LPOP, items pickled."""

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key

    def put(self, value: Any) -> None:
        import pickle

        self.client.rpush(self.key, pickle.dumps(value))

    def get(self) -> Any:
        import pickle

        return pickle.loads(self.client.lpop(self.key))
