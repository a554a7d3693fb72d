"""The floor: ``multiprocessing.Pool`` with one process per core, no scheduler, no network."""

from __future__ import annotations

import multiprocessing
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.pool import Pool
from typing import Any

from benchmarks.config import RunConfig


def trivial(x: int) -> int:
    return x


class PoolSession:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def call(self, x: int) -> Any:
        return self._pool.apply(trivial, (x,))

    def map(self, n: int) -> list[Any]:
        return self._pool.map(trivial, range(n))


def version() -> str:
    return f"Python {platform.python_version()} ({multiprocessing.get_start_method()})"


@contextmanager
def session(config: RunConfig) -> Iterator[PoolSession]:
    pool = multiprocessing.Pool(config.workers)
    try:
        yield PoolSession(pool)
    finally:
        pool.close()
        pool.join()
