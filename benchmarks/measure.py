"""What each benchmark times, written once against the small ``Session`` port every peer implements."""

from __future__ import annotations

import time
from typing import Any, Protocol

from benchmarks.config import RunConfig
from benchmarks.stats import latency_summary, throughput_summary


class Session(Protocol):
    """A peer's warm execution engine, already started, running the trivial ``f(x) = x``."""

    def call(self, x: int) -> Any:
        """One round trip: submit ``f(x)`` and wait for its result."""

    def map(self, n: int) -> list[Any]:
        """Run ``f`` over ``range(n)`` the peer's idiomatic way and return all results, in order."""


class WrongResultError(AssertionError):
    """A peer returned something other than what the trivial function returns."""


def measure_latency(session: Session, config: RunConfig) -> dict[str, Any]:
    """Warm round trip of one trivial call, after ``warmup_calls`` untimed calls."""
    for _ in range(config.warmup_calls):
        _check(session.call(1), 1)
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(config.calls):
        start = clock()
        result = session.call(1)
        samples.append(clock() - start)
        _check(result, 1)
    return {"warmup": config.warmup_calls, **latency_summary(samples)}


def measure_throughput(session: Session, config: RunConfig) -> dict[str, Any]:
    """Inputs per second over ``inputs`` trivial inputs, ``repetitions`` times, after a warm-up map."""
    if config.warmup_inputs:
        _check_map(session.map(config.warmup_inputs), config.warmup_inputs)
    durations: list[float] = []
    for _ in range(config.repetitions):
        start = time.perf_counter()
        results = session.map(config.inputs)
        durations.append(time.perf_counter() - start)
        _check_map(results, config.inputs)
    return {"warmup_inputs": config.warmup_inputs, **throughput_summary(config.inputs, durations)}


def _check(result: Any, expected: Any) -> None:
    if result != expected:
        raise WrongResultError(f"expected {expected!r}, got {result!r}")


def _check_map(results: list[Any], n: int) -> None:
    if len(results) != n or results != list(range(n)):
        raise WrongResultError(
            f"map over range({n}) returned {len(results)} results, not 0..{n - 1} in order"
        )
