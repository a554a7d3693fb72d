"""Pure summaries of timing samples: latency percentiles and throughput spread."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(samples: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def latency_summary(samples_s: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99, mean, stdev, min and max of per-call round trips, in milliseconds."""
    ms = [s * 1000 for s in samples_s]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "stdev_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


def throughput_summary(inputs: int, durations_s: Sequence[float]) -> dict[str, Any]:
    """Inputs per second for each repetition, their median and spread."""
    if not durations_s:
        raise ValueError("throughput of no runs")
    rates = [inputs / d for d in durations_s]
    median = statistics.median(rates)
    return {
        "inputs": inputs,
        "repetitions": len(rates),
        "median_per_s": median,
        "min_per_s": min(rates),
        "max_per_s": max(rates),
        "stdev_per_s": statistics.stdev(rates) if len(rates) > 1 else 0.0,
        "spread_pct": (max(rates) - min(rates)) / median * 100,
        "runs_per_s": rates,
        "runs_s": list(durations_s),
    }


def ramp_summary(submitted: float, starts: Sequence[tuple[str, float, float]], target: int) -> dict[str, Any]:
    """How fast a burst got ``target`` workers: ``starts`` holds one ``(worker, start, end)`` per input
    (wall-clock seconds, the same clock as ``submitted``, the moment the burst was submitted).

    A worker counts as running from the start of its first input. ``curve`` is the number of workers
    started after each new one and ``running`` the number of inputs running after each start or end,
    both as ``[seconds since submitted, count]`` pairs.
    """
    if not starts:
        raise ValueError("ramp of no inputs")
    first: dict[str, float] = {}
    for worker, start, _end in starts:
        first[worker] = min(start, first.get(worker, start))
    ordered = sorted(first.values())
    running = _running([(s, e) for _w, s, e in starts])
    curve = [[round(t - submitted, 4), i + 1] for i, t in enumerate(ordered)]
    return {
        "inputs": len(starts),
        "workers": len(ordered),
        "target": target,
        "first_start_s": ordered[0] - submitted,
        "to_target_s": ordered[target - 1] - submitted if len(ordered) >= target else None,
        "makespan_s": max(end for _w, _s, end in starts) - submitted,
        "max_concurrent": max(count for _t, count in running),
        "curve": curve,
        "running": [[round(t - submitted, 4), count] for t, count in running],
    }


def _running(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, int]]:
    """How many intervals are open after each start or end (an interval is open on ``[start, end)``)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    out: list[tuple[float, int]] = []
    open_now = 0
    for t, delta in events:
        open_now += delta
        out.append((t, open_now))
    return out
