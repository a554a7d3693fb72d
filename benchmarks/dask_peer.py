"""Dask peer: a ``distributed`` LocalCluster of worker processes, one per core, one thread each."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import distributed

from benchmarks.config import RunConfig


def trivial(x: int) -> int:
    return x


class DaskSession:
    def __init__(self, client: distributed.Client) -> None:
        self._client = client

    def call(self, x: int) -> Any:
        # pure=False: otherwise Dask deduplicates identical calls by key and may skip the round trip.
        return self._client.submit(trivial, x, pure=False).result()

    def map(self, n: int) -> list[Any]:
        futures = self._client.map(trivial, range(n), pure=False)
        return list(self._client.gather(futures))  # type: ignore[no-untyped-call]


def version() -> str:
    return f"{metadata.version('distributed')} (dask {metadata.version('dask')})"


@contextmanager
def session(config: RunConfig) -> Iterator[DaskSession]:
    cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=config.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        with distributed.Client(cluster) as client:  # type: ignore[no-untyped-call]
            yield DaskSession(client)
    finally:
        cluster.close()
