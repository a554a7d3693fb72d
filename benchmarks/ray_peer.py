"""Ray peer: tasks on a local Ray cluster sized to this machine's cores."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from benchmarks.config import RunConfig


def trivial(x: int) -> int:
    return x


class RaySession:
    def __init__(self) -> None:
        self._f = ray.remote(trivial)

    def call(self, x: int) -> Any:
        return ray.get(self._f.remote(x))

    def map(self, n: int) -> list[Any]:
        return list(ray.get([self._f.remote(i) for i in range(n)]))


def version() -> str:
    return str(ray.__version__)


@contextmanager
def session(config: RunConfig) -> Iterator[RaySession]:
    ray.init(
        num_cpus=config.workers,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        yield RaySession()
    finally:
        ray.shutdown()
