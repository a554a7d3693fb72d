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
