"""The tables that drive everything: which peers exist and which benchmarks run and get reported.

Adding a benchmark is one ``Benchmark`` entry (a ``measure`` function over ``Session`` plus how to
show its figures); adding a peer is one ``Peer`` entry and one ``<name>_peer.py`` module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks.config import RunConfig
from benchmarks.measure import Session, measure_latency, measure_throughput

Figures = Mapping[str, Any]

BASELINE = "ray"
"""Every table shows each peer's ratio to this peer."""


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    module: str
    requires: str
    """Top-level module whose absence means "not installed"."""
    code: Mapping[str, str] = field(default_factory=dict)
    """Per benchmark name, the code that is timed, as shown in the docs."""


@dataclass(frozen=True)
class Column:
    label: str
    render: Callable[[Figures], str]


@dataclass(frozen=True)
class Series:
    label: str
    key: str
    err_lo: str | None = None
    err_hi: str | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    description: str
    measure: Callable[[Session, RunConfig], dict[str, Any]]
    columns: tuple[Column, ...]
    ratio_key: str
    higher_is_better: bool
    chart_unit: str
    chart_series: tuple[Series, ...]


def _num(key: str, digits: int) -> Callable[[Figures], str]:
    return lambda f: f"{f[key]:,.{digits}f}"


def _ms(key: str) -> Callable[[Figures], str]:
    return lambda f: _fmt_ms(f[key])


def _fmt_ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:,.2f}"


def _mean_stdev(f: Figures) -> str:
    return f"{_fmt_ms(f['mean_ms'])} ± {_fmt_ms(f['stdev_ms'])}"


def _spread(f: Figures) -> str:
    if f["repetitions"] < 2:
        return "1 run"
    return f"{f['min_per_s']:,.0f}-{f['max_per_s']:,.0f} (±{f['spread_pct'] / 2:.1f}%)"


PEERS: tuple[Peer, ...] = (
    Peer(
        "vivace",
        "Vivace",
        "benchmarks.vivace_peer",
        "vivace",
        {"latency": "`f.remote(1)`", "throughput": "`list(f.map(range(N)))`"},
    ),
    Peer(
        "ray",
        "Ray",
        "benchmarks.ray_peer",
        "ray",
        {"latency": "`ray.get(f.remote(1))`", "throughput": "`ray.get([f.remote(i) for i in range(N)])`"},
    ),
    Peer(
        "dask",
        "Dask distributed",
        "benchmarks.dask_peer",
        "distributed",
        {
            "latency": "`client.submit(f, 1, pure=False).result()`",
            "throughput": "`client.gather(client.map(f, range(N), pure=False))`",
        },
    ),
    Peer(
        "multiprocessing",
        "multiprocessing.Pool (floor)",
        "benchmarks.multiprocessing_peer",
        "multiprocessing",
        {"latency": "`pool.apply(f, (1,))`", "throughput": "`pool.map(f, range(N))`"},
    ),
)

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        name="latency",
        title="Warm round trip of a trivial function",
        description=(
            "One call of `f(x) = x` at a time, on an already running pool of workers, after an untimed "
            "warm-up. Lower is better; *vs Ray* is the p50 divided by Ray's p50."
        ),
        measure=measure_latency,
        columns=(
            Column("p50 (ms)", _ms("p50_ms")),
            Column("p99 (ms)", _ms("p99_ms")),
            Column("mean ± stdev (ms)", _mean_stdev),
            Column("min-max (ms)", lambda f: f"{_fmt_ms(f['min_ms'])}-{_fmt_ms(f['max_ms'])}"),
        ),
        ratio_key="p50_ms",
        higher_is_better=False,
        chart_unit="ms",
        chart_series=(Series("p50", "p50_ms"), Series("p99", "p99_ms")),
    ),
    Benchmark(
        name="throughput",
        title="Throughput of trivial inputs",
        description=(
            "`f(x) = x` over N inputs, submitted at once and all results collected; inputs per second, "
            "median of the repetitions, after an untimed warm-up map. Higher is better; *vs Ray* is the "
            "median divided by Ray's. `Pool.map` sends inputs in large chunks (its default `chunksize`), "
            "so it is the floor of what the machine can do, not a per-task system."
        ),
        measure=measure_throughput,
        columns=(Column("inputs/s (median)", _num("median_per_s", 0)), Column("spread (min-max)", _spread)),
        ratio_key="median_per_s",
        higher_is_better=True,
        chart_unit="inputs/s",
        chart_series=(Series("median", "median_per_s", "min_per_s", "max_per_s"),),
    ),
)


def peer(name: str) -> Peer:
    for p in PEERS:
        if p.name == name:
            return p
    raise KeyError(f"unknown peer {name!r}; known: {', '.join(p.name for p in PEERS)}")


def benchmark(name: str) -> Benchmark:
    for b in BENCHMARKS:
        if b.name == name:
            return b
    raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(b.name for b in BENCHMARKS)}")
