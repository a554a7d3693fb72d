"""Optional PNG bar charts, one per benchmark; skipped quietly when matplotlib is not installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.registry import BENCHMARKS, PEERS, Benchmark

_LOG_RATIO = 30
"""Bars that differ by more than this factor go on a log scale, or the small ones vanish."""


def write_charts(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Charts written, by benchmark name; empty when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    written: dict[str, Path] = {}
    for bench in BENCHMARKS:
        rows = _rows(results, bench)
        if rows:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{bench.name}.png"
            _bar_chart(bench, rows, path, results["machine"])
            written[bench.name] = path
    if (results.get("autoscale") or {}).get("peers"):
        from benchmarks import autoscale

        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "autoscale.png"
        if autoscale.chart(results["autoscale"], path, results["machine"]):
            written["autoscale"] = path
    return written


def _rows(results: Mapping[str, Any], bench: Benchmark) -> list[tuple[str, Mapping[str, Any]]]:
    if bench.name not in results.get("benchmarks", ()):
        return []
    rows = []
    for p in PEERS:
        figures = results["peers"].get(p.name, {}).get("benchmarks", {}).get(bench.name)
        if figures and "error" not in figures:
            rows.append((p.label, figures))
    return rows


def _bar_chart(
    bench: Benchmark, rows: list[tuple[str, Mapping[str, Any]]], path: Path, machine: Mapping[str, Any]
) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    n_series = len(bench.chart_series)
    width = 0.8 / n_series
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    everything = [f[s.key] for s in bench.chart_series for _, f in rows if f[s.key] > 0]
    log = bool(everything) and max(everything) / min(everything) > _LOG_RATIO
    for i, series in enumerate(bench.chart_series):
        xs = [j + (i - (n_series - 1) / 2) * width for j in range(len(rows))]
        values = [figures[series.key] for _, figures in rows]
        yerr = None
        if series.err_lo and series.err_hi:
            lo, hi = series.err_lo, series.err_hi
            yerr = [[f[series.key] - f[lo] for _, f in rows], [f[hi] - f[series.key] for _, f in rows]]
        bars = ax.bar(xs, values, width, yerr=yerr, capsize=3, label=series.label)
        ax.bar_label(bars, fmt="{:,.2f}" if max(values) < 100 else "{:,.0f}", fontsize=8, padding=2)
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    if log:
        ax.set_yscale("log")
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
    ax.set_ylabel(bench.chart_unit + (" (log scale)" if log else ""))
    better = "higher" if bench.higher_is_better else "lower"
    ax.set_title(
        f"{bench.title} ({better} is better)\n{machine['cpu_count']} CPUs, Python {machine['python']}"
    )
    ax.title.set_fontsize(10)
    if n_series > 1:
        ax.legend(fontsize=8)
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
