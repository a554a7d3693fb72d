"""Vivace peer: an ephemeral app on the embedded default (a local daemon under ``VIVACE_HOME``).

Vivace containers import this module by name (``benchmarks.vivace_peer``) to find ``trivial``, so it
imports only the standard library and ``vivace`` at module level; the ``RunConfig`` import is for type
checkers only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import vivace

if TYPE_CHECKING:
    from benchmarks.config import RunConfig

app = vivace.App("bench")


@app.function(min_containers=1)  # one warm container, so calls never wait for a cold start
def trivial(x: int) -> int:
    return x


class VivaceSession:
    def call(self, x: int) -> Any:
        return trivial.remote(x)

    def map(self, n: int) -> list[Any]:
        return list(trivial.map(range(n)))


def version() -> str:
    return str(getattr(vivace, "__version__", "unknown"))


@contextmanager
def session(config: RunConfig) -> Iterator[VivaceSession]:
    del config  # Vivace scales containers itself; min_containers=1 keeps one warm.
    with app.run():
        yield VivaceSession()
