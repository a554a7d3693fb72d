"""Command line of the harness: parse options, run the peers, write results and the docs page."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import (
    autoscale,
    coldstart,
    dashboard,
    driver,
    images,
    metering,
    repro,
    sandboxes,
    scale,
    storage,
    volumes,
    web,
)
from benchmarks.charts import write_charts
from benchmarks.config import FULL, QUICK, RunConfig
from benchmarks.machine import machine_info
from benchmarks.registry import BENCHMARKS, PEERS
from benchmarks.report import render_markdown

SCHEMA = 1
SECTIONS: dict[str, Callable[[RunConfig, Callable[[str], None]], dict[str, Any]]] = {
    "coldstart": coldstart.run,
    "images": images.run,
    "autoscale": autoscale.run,
    "scale": scale.run,
    "storage": storage.run,
    "volumes": volumes.run,
    "sandboxes": sandboxes.run,
    "web": web.run,
    "metering": metering.run,
    "dashboard": dashboard.run,
}
"""Benchmarks that drive Vivace and its peers themselves, each writing one section of the results."""
RESULTS = driver.REPO_ROOT / "benchmarks" / "results" / "latest.json"
DOCS = driver.REPO_ROOT / "docs" / "benchmarks.md"
CHARTS = driver.REPO_ROOT / "docs" / "benchmarks"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        peers = _pick(args.only, [p.name for p in PEERS], "peer")
        benches = _pick(args.bench, [b.name for b in BENCHMARKS] + list(SECTIONS), "benchmark")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.report_only:
        results = json.loads(args.results.read_text())
    else:
        config = _config(args)
        call_benches = [b for b in benches if b not in SECTIONS]
        sections: dict[str, Any] = {}
        walls: dict[str, float] = {}
        started = time.monotonic()
        try:
            peer_results = driver.run_all(peers, call_benches, config, args.verbose) if call_benches else {}
            for name in benches:
                if name in SECTIONS:
                    began = time.monotonic()
                    sections[name] = SECTIONS[name](config, _say)
                    walls[name] = round(time.monotonic() - began, 1)
                    _say(f"{name}: done in {walls[name]:.0f} s")
        except KeyboardInterrupt:
            print("[bench] interrupted; the peer in progress was stopped, nothing written", file=sys.stderr)
            return 130
        results = _document(config, benches, peer_results)
        results["wall_s"] = round(time.monotonic() - started, 1)
        results["section_wall_s"] = walls
        previous = json.loads(args.results.read_text()) if args.results.exists() else None
        fresh = {**results, **sections}  # what this invocation measured: the run-to-run table's subject
        if args.merge and previous is not None:
            results = _merge(previous, results, bool(call_benches), list(sections))
        results.update(sections)
        if previous is not None:
            results["reproducibility"] = repro.compare(previous, fresh)
            if args.merge and not results["reproducibility"].get("rows") and previous.get("reproducibility"):
                # nothing this run measured was measured last time: keep the last run's table
                results["reproducibility"] = previous["reproducibility"]
        _write_atomic(args.results, json.dumps(results, indent=2) + "\n")
        print(
            f"[bench] wrote {_show(args.results)} ({results['wall_s']:.0f} s of measuring)", file=sys.stderr
        )
    write_docs(results, args.docs, args.charts)
    print(_summary(results))
    failed = _failures(results)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _merge(previous: dict[str, Any], now: dict[str, Any], ran_calls: bool, ran: list[str]) -> dict[str, Any]:
    """``now`` with what it did not measure taken from ``previous``: the peers' round trips and
    throughput when no call benchmark ran, and every section that did not run."""
    if ran_calls:
        merged = dict(now)
    else:  # the last run's time, less what its sections that ran again took, plus this run's
        redone = sum((previous.get("section_wall_s") or {}).get(name, 0.0) for name in ran)
        merged = {**previous, "wall_s": round(previous.get("wall_s", 0.0) - redone + now["wall_s"], 1)}
    merged["section_wall_s"] = {**previous.get("section_wall_s", {}), **now.get("section_wall_s", {})}
    for name in SECTIONS:
        if name in ran:
            merged.pop(name, None)  # this run's figures replace it
        elif name in previous:
            merged[name] = previous[name]
    return merged


def _failures(results: dict[str, Any]) -> list[str]:
    failed = [n for n, r in results["peers"].items() if r["status"] in ("error", "timeout")]
    failed += [f"coldstart/{n}" for n, r in results.get("coldstart", {}).items() if r["status"] == "error"]
    imaged = results.get("images") or {}
    failed += ["images"] if imaged.get("status") == "error" else []
    failed += [f"images/{n}" for n, r in imaged.get("coldstart", {}).items() if r["status"] == "error"]
    auto = (results.get("autoscale") or {}).get("peers", {})
    failed += [f"autoscale/{n}" for n, r in auto.items() if r.get("status") in ("error", "timeout")]
    failed += ["scale"] if (results.get("scale") or {}).get("status") == "error" else []
    stored = (results.get("storage") or {}).get("peers", {})
    failed += [f"storage/{n}" for n, r in stored.items() if r.get("status") == "error"]
    met = results.get("metering") or {}
    failed += [
        f"metering/{k}" for k in ("call_path", "queries") if (met.get(k) or {}).get("status") == "error"
    ]
    dash = results.get("dashboard") or {}
    failed += ["dashboard"] if dash.get("status") == "error" else []
    failed += [
        f"dashboard/{n}" for n, r in (dash.get("rows") or {}).items() if r["page"].get("status") == "error"
    ]
    return failed


def write_docs(results: dict[str, Any], md_path: Path, chart_dir: Path) -> None:
    """Write the markdown page and, where matplotlib is importable, its charts."""
    charts = write_charts(results, chart_dir)
    rel = {name: os.path.relpath(path, md_path.parent) for name, path in charts.items()}
    _write_atomic(md_path, render_markdown(results, rel))
    print(
        f"[bench] wrote {_show(md_path)}" + (f" and {len(charts)} chart(s)" if charts else ""),
        file=sys.stderr,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer calls and inputs, one repetition (< 5 min)")
    p.add_argument("--only", help="comma-separated peers: " + ",".join(x.name for x in PEERS))
    p.add_argument(
        "--bench",
        help="comma-separated benchmarks: " + ",".join([*(b.name for b in BENCHMARKS), *SECTIONS]),
    )
    p.add_argument("--calls", type=int, help="timed calls for the latency benchmark")
    p.add_argument("--inputs", type=int, help="inputs per throughput repetition")
    p.add_argument("--repetitions", type=int, help="throughput repetitions")
    p.add_argument("--workers", type=int, help="worker processes for Ray, Dask and the pool (default: CPUs)")
    p.add_argument("--peer-timeout", dest="peer_timeout_s", type=float, help="seconds allowed per peer")
    p.add_argument("--run-timeout", dest="run_timeout_s", type=float, help="seconds allowed for all peers")
    p.add_argument("--results", type=Path, default=RESULTS, help="results JSON to write (or read)")
    p.add_argument("--docs", type=Path, default=DOCS, help="markdown page to write")
    p.add_argument("--charts", type=Path, default=CHARTS, help="folder for PNG charts")
    p.add_argument("--report-only", action="store_true", help="only re-render the docs from --results")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep what this run does not measure from the last --results (peers, other sections)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show the peers' own output")
    return p


def _pick(raw: str | None, known: list[str], what: str) -> list[str]:
    if not raw:
        return known
    chosen = [x.strip() for x in raw.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return [x for x in known if x in chosen]


def _config(args: argparse.Namespace) -> RunConfig:
    base = QUICK if args.quick else FULL
    return base.with_overrides(
        calls=args.calls,
        inputs=args.inputs,
        repetitions=args.repetitions,
        workers=args.workers,
        peer_timeout_s=args.peer_timeout_s,
        run_timeout_s=args.run_timeout_s,
    )


def _document(config: RunConfig, benches: list[str], peers: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "machine": machine_info(),
        "config": json.loads(config.to_json()),
        "benchmarks": benches,
        "versions": {name: r.get("version") for name, r in peers.items()},
        "peers": peers,
    }


def _summary(results: dict[str, Any]) -> str:
    lines = []
    for name, r in results["peers"].items():
        figures = r.get("benchmarks", {})
        lat, thr = figures.get("latency", {}), figures.get("throughput", {})
        text = r["status"]
        if "p50_ms" in lat:
            text += f"  p50 {lat['p50_ms']:.2f} ms  p99 {lat['p99_ms']:.2f} ms"
        if "median_per_s" in thr:
            text += f"  {thr['median_per_s']:,.0f} inputs/s"
        lines.append(f"{name:>16}: {text}")
    for name, r in results.get("coldstart", {}).items():
        text = f"cold start p50 {r['p50_ms']:.1f} ms" if "p50_ms" in r else r["status"]
        lines.append(f"{name:>16}: {text}")
    for name, r in (results.get("images") or {}).get("coldstart", {}).items():
        text = f"numpy+pandas cold start p50 {r['p50_ms']:.1f} ms" if "p50_ms" in r else r["status"]
        lines.append(f"{'images/' + name:>16}: {text}")
    for name, r in (results.get("autoscale") or {}).get("peers", {}).items():
        reached = r.get("to_target_s")
        text = (
            r.get("status", "?")
            if r.get("status") != "ok"
            else (
                f"20 running after {reached:.2f} s"
                if reached is not None
                else "never 20 running in every burst"
            )
        )
        lines.append(f"{'autoscale/' + name:>16}: {text}")
    sc = results.get("scale") or {}
    if sc:
        text = f"{sc['inputs']:,} queued at {sc['per_s']:,.0f}/s" if "per_s" in sc else sc.get("status", "?")
        lines.append(f"{'scale':>16}: {text}")
    return "\n".join(lines)


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(driver.REPO_ROOT))
    except ValueError:
        return str(path)
