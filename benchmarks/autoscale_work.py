"""The work of the autoscaling burst, shared by every peer: one second per input, and who ran it.

Standard library only: Ray's worker processes and Vivace's containers both import it by name.
"""

from __future__ import annotations

import os
import time
from typing import Any

MAX_CONTAINERS = 20
CPU = 0.05
"""Cores each container, task or actor asks for: 20 of them fit the smallest machine this runs on."""


def one_second(name: str) -> tuple[str, float, float]:
    """Sleep a second; return who ran it and when it started and ended (wall clock)."""
    start = time.time()
    time.sleep(1.0)
    return name, start, time.time()


def pid_one_second(i: int) -> tuple[str, float, float]:
    """A Ray task: its worker process is named by its pid."""
    return one_second(str(os.getpid()))


def noop(i: int) -> int:
    return i


class OneSecond:
    """An actor of Ray Data's pool, named by its pid: a second per row."""

    def __init__(self) -> None:
        self.name = str(os.getpid())

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        name, start, end = one_second(self.name)
        n = len(batch["id"])
        return {"worker": [name] * n, "start": [start] * n, "end": [end] * n}
