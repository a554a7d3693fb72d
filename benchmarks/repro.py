"""Run-to-run check: this run's headline medians beside the previous run's, on the same machine and mode.

Each headline figure carries the noise its own run reports: for a latency, how far the p90 lies above
the median; for a throughput, half the range of its repetitions; for an autoscaling burst, half the
range of its bursts. A change counts as within noise when it is no larger than the bigger of the two
runs' noise. Figures measured once (no spread) are listed with their change only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Headline = tuple[str, float, float | None]
"""(name, median, noise as a fraction of the median or ``None``)."""


def headlines(results: Mapping[str, Any]) -> dict[str, tuple[float, float | None]]:
    return {name: (value, noise) for name, value, noise in _headlines(results)}


def _headlines(r: Mapping[str, Any]) -> Iterator[Headline]:
    for name, peer in (r.get("peers") or {}).items():
        figures = peer.get("benchmarks") or {}
        lat, thr = figures.get("latency") or {}, figures.get("throughput") or {}
        if "p50_ms" in lat:
            yield f"round trip p50, {name} (ms)", lat["p50_ms"], _upper(lat)
        if "median_per_s" in thr:
            noise = thr["spread_pct"] / 200 if thr.get("repetitions", 1) > 1 else None
            yield f"throughput, {name} (inputs/s)", thr["median_per_s"], noise
    for section, label in (("coldstart", "cold start"), ("images", "numpy+pandas cold start")):
        block = r.get(section) or {}
        peers = block.get("coldstart", {}) if section == "images" else block
        for name, fig in peers.items():
            if isinstance(fig, dict) and "p50_ms" in fig:
                yield f"{label} p50, {name} (ms)", fig["p50_ms"], _upper(fig)
    for name, fig in ((r.get("autoscale") or {}).get("peers") or {}).items():
        if fig.get("status") == "ok" and fig.get("to_target_s") is not None:
            lo, hi = fig["to_target_s_min"], fig["to_target_s_max"]
            noise = (hi - lo) / 2 / fig["to_target_s"] if len(fig.get("runs", ())) > 1 else None
            yield f"autoscale to {fig['runs'][0]['target']} running, {name} (s)", fig["to_target_s"], noise
    for name, fig in ((r.get("storage") or {}).get("peers") or {}).items():
        if fig.get("status") == "ok":
            for op in ("dict_get", "queue_put"):
                spread = (fig[f"{op}_max"] - fig[f"{op}_min"]) / 2 / fig[op] if len(fig["runs"]) > 1 else None
                yield f"{op} per second, {name}", fig[op], spread
    sc = r.get("scale") or {}
    if "per_s" in sc:
        yield f"spawn_map of {sc['inputs']:,} (inputs/s)", sc["per_s"], None


def _upper(fig: Mapping[str, Any]) -> float | None:
    return (fig["p90_ms"] - fig["p50_ms"]) / fig["p50_ms"] if fig.get("p50_ms") else None


def compare(previous: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison stored in the results, or why there is none."""
    keys = ("cpu_model", "cpu_count", "memory_gib")
    pm, nm = previous.get("machine") or {}, now.get("machine") or {}
    if any(pm.get(k) != nm.get(k) for k in keys):
        return {"compared": False, "reason": "the previous run was on another machine"}
    if (previous.get("config") or {}).get("mode") != (now.get("config") or {}).get("mode"):
        return {"compared": False, "reason": "the previous run was in another mode"}
    before, after = headlines(previous), headlines(now)
    rows = []
    for name, (value, noise) in after.items():
        if name not in before:
            continue
        old, old_noise = before[name]
        change = (value - old) / old if old else 0.0
        noises = [n for n in (noise, old_noise) if n is not None]
        within = abs(change) <= max(noises) if noises else None
        rows.append({"figure": name, "previous": old, "now": value, "change": change,
                     "noise": max(noises) if noises else None, "within_noise": within})  # fmt: skip
    return {"compared": True, "previous_run": pm.get("timestamp"), "rows": rows}


def render(rep: Mapping[str, Any]) -> list[str]:
    lines = ["## Run to run", ""]
    if not rep.get("compared"):
        return [*lines, f"Not compared: {rep.get('reason', 'no previous run')}.", ""]
    rows = rep.get("rows") or []
    checked = [r for r in rows if r["within_noise"] is not None]
    inside = sum(1 for r in checked if r["within_noise"])
    lines += [
        f"This run's medians beside the previous run's on this machine ({rep.get('previous_run')}), with "
        "the larger of the two runs' own noise (for a latency, how far its p90 lies above its median; for a "
        f"throughput or a burst, half the range of the repetitions). {inside} of {len(checked)} figures with a "
        "noise moved by no more than it.",
        "",
        "| Figure | Previous | Now | Change | Noise | Within noise |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        noise = "—" if r["noise"] is None else f"±{r['noise'] * 100:.1f}%"
        verdict = {True: "yes", False: "**no**", None: "—"}[r["within_noise"]]
        lines.append(
            f"| {r['figure']} | {_num(r['previous'])} | {_num(r['now'])} | {r['change'] * 100:+.1f}% | "
            f"{noise} | {verdict} |"
        )
    return [*lines, ""]


def _num(value: float) -> str:
    return f"{value:,.3f}" if value < 1 else f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
