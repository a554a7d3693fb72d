"""A control plane and one crun worker for the benchmarks that drive Vivace from this process.

As in ``vivace.testing.cluster.LocalCluster``: the control plane runs in this process on loopback HTTP,
the worker is a process of its own. The client's environment points at it while the block runs.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def local_cluster(
    home: Path,
    *,
    warm_pool: int | None,
    sandbox_pool: int | None = None,
    worker_env: dict[str, str] | None = None,
    runtimes: list[str] | None = None,
    worker_cpu: float = 2.0,
    worker_memory: int = 4096,
) -> Iterator[Any]:
    """Yields the running ``LocalCluster``; ``warm_pool=None`` keeps the worker's default."""
    from vivace import _sync
    from vivace._sdk import connection
    from vivace.testing.cluster import LocalCluster

    home.mkdir(parents=True, exist_ok=True)
    from vivace.server.config import ServerConfig

    # the product's default tick, not the test harness's faster one
    tick = ServerConfig(store_url="", blob_dir="").tick
    with LocalCluster(
        home,
        runtimes=runtimes or ["crun"],
        warm_pool=warm_pool,
        sandbox_pool=sandbox_pool,
        worker_env=worker_env,
        tick=tick,
        worker_cpu=worker_cpu,
        worker_memory=worker_memory,
    ) as cluster:
        os.environ.update(cluster.client_env())
        _sync.run_sync(connection.reset_client())
        try:
            yield cluster
        finally:
            for key in cluster.client_env():
                os.environ.pop(key, None)
            _sync.run_sync(connection.reset_client())


def timed_remote(app: Any, fn: Any) -> float:
    """Seconds ``fn.remote(1)`` takes inside ``app.run()`` (the app's start is not timed); checks it
    returned 1."""
    with app.run():
        start = time.perf_counter()
        result = fn.remote(1)
        elapsed = time.perf_counter() - start
    if result != 1:
        raise RuntimeError(f"f.remote(1) returned {result!r}")
    return elapsed
