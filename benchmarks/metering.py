"""Metering (ADR 0015): what it costs the call path, and how fast usage is read from a full store.

- **Call path**: sequential ``f.remote(x)`` round trips of a trivial function on a warm container
  (control plane in this process, one worker on the ``process`` runtime), with metering on and off
  (``metering.ON_CALL_PATH``: busy time and each call's cost, counted as inputs are leased and
  finished), in alternating blocks so that drift hits both alike.
- **Usage reads**: the store holds ``containers`` metered containers of 10 apps over the last 7 days
  and ``calls`` calls; each query of ``GET /v1/usage`` (and the spend check the autoscaler makes every
  2 s with a limit set) is timed over HTTP, the median of several.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.config import RunConfig
from benchmarks.markdown import row
from benchmarks.stats import latency_summary

QUERIES = {
    "by app, this month": {"by": "app"},
    "by function and day, 7 days": {"by": "function,day", "since": "7d"},
    "by GPU type, 7 days": {"by": "gpu", "since": "7d"},
    "by container, 7 days": {"by": "container", "since": "7d"},
}


def sizes_for(config: RunConfig) -> tuple[int, int, int, int]:
    """(round trips per mode, block size, containers, calls)."""
    return (300, 50, 1000, 10_000) if config.mode == "quick" else (1500, 100, 1000, 10_000)


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.cluster import local_cluster

    n, block, n_containers, n_calls = sizes_for(config)
    out: dict[str, Any] = {"round_trips": n, "containers": n_containers, "calls": n_calls,
                           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="vivace-bench-metering-") as tmp,
        local_cluster(Path(tmp) / "home", warm_pool=None, runtimes=["process"]) as cluster,
    ):
        log(f"metering: {n} round trips with metering on and {n} off")
        try:
            out["call_path"] = {"status": "ok", **_call_path(n, block)}
        except Exception as err:  # reported, never left blank
            out["call_path"] = {"status": "error", "error": str(err)}
        log(f"metering: usage queries over {n_containers} containers and {n_calls} calls")
        try:
            out["queries"] = {"status": "ok", "rows": _queries(cluster, n_containers, n_calls)}
        except Exception as err:
            out["queries"] = {"status": "error", "error": str(err)}
    return out


def _call_path(n: int, block: int) -> dict[str, Any]:
    import vivace
    from vivace.server.services import metering

    app = vivace.App("bench-metering")

    @app.function(serialized=True, min_containers=1)
    def echo(x: int) -> int:
        return x

    samples: dict[bool, list[float]] = {True: [], False: []}
    with app.run():
        for i in range(50):  # warm: the container is up and the connection pool is open
            echo.remote(i)
        try:
            for b in range(2 * n // block):
                on = b % 2 == 0
                metering.ON_CALL_PATH = on
                for i in range(block):
                    began = time.perf_counter()
                    if echo.remote(i) != i:
                        raise RuntimeError("echo returned something else")
                    samples[on].append(time.perf_counter() - began)
        finally:
            metering.ON_CALL_PATH = True
    return {"on": latency_summary(samples[True]), "off": latency_summary(samples[False])}


def _queries(cluster: Any, n_containers: int, n_calls: int) -> dict[str, Any]:
    import httpx

    from vivace._version import __version__
    from vivace.cli.times import parse_when

    cluster.plane.store.write_sync(lambda tx: _seed(tx, n_containers, n_calls))
    headers = {"authorization": f"Bearer {cluster.user_token}", "x-vivace-version": __version__}
    rows: dict[str, Any] = {}
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=120) as http:
        http.put("/v1/spend-limits", json={"amount": 1e9}).raise_for_status()
        plan = {label: ("/v1/usage", q) for label, q in QUERIES.items()}
        plan["spend limits (the autoscaler's check)"] = ("/v1/spend-limits", {})
        for label, (path, q) in plan.items():
            params = {k: (parse_when(v) if k == "since" else v) for k, v in q.items()}
            times = []
            for _ in range(7):
                began = time.perf_counter()
                r = http.get(path, params=params)
                times.append(time.perf_counter() - began)
                r.raise_for_status()
            body = r.json()
            rows[label] = {
                **latency_summary(times),
                "result_rows": len(body.get("rows") or body.get("limits")),
            }
        http.delete("/v1/spend-limits").raise_for_status()
    return rows


def _seed(tx: Any, n_containers: int, n_calls: int) -> None:
    """10 apps of 5 functions; containers up for 1 minute to 2 hours over the last 7 days, a tenth with
    a GPU; calls spread over the functions."""
    from vivace.protocol.functions import FunctionSpec

    now = tx.now
    prices = json.dumps({"cpu_core_second": 0.0000131, "memory_gib_second": 0.00000222,
                         "gpu_second": {"H100": 0.001097}})  # fmt: skip
    funcs = []
    for a in range(10):
        app_id = f"ap-bench{a:04d}{secrets.token_hex(4)}"
        tx.execute(
            "INSERT INTO apps (id, name, state, created_at, heartbeat_at) VALUES (?, ?, 'stopped', ?, ?)",
            (app_id, f"bench-app-{a}", now - 8 * 86400, now),
        )
        for f in range(5):
            fid = f"fu-bench{a:02d}{f:02d}{secrets.token_hex(4)}"
            spec = json.dumps(FunctionSpec(name=f"f{f}", module="m", qualname=f"f{f}").to_dict())
            tx.execute(
                "INSERT INTO functions (id, app_id, name, spec, created_at, active) VALUES (?, ?, ?, ?, ?, 0)",
                (fid, app_id, f"f{f}", spec, now - 8 * 86400),
            )
            funcs.append((fid, app_id))
    for i in range(n_containers):
        fid, app_id = funcs[i % len(funcs)]
        start = now - 7 * 86400 * (i + 0.5) / n_containers
        life = 60.0 + (i * 7919) % 7140
        gpu = i % 10 == 0
        rate = 1.0 * 0.0000131 + 1.0 * 0.00000222 + (0.001097 if gpu else 0.0)
        tx.execute(
            "INSERT INTO containers (id, function_id, app_id, state, lease_token, cpu, memory, created_at, "
            "assigned_at, image_ready_at, started_at, ready_at, stopped_at, last_active_at, busy_s, pool, "
            "gpu_type, gpu_count, prices, rate) VALUES (?, ?, ?, 'stopped', 'x', 1.0, 1024, ?, ?, ?, ?, ?, ?, ?, ?, "
            "'default', ?, ?, ?, ?)",
            (f"ta-bench{i:06d}", fid, app_id, start - 2, start - 1.5, start - 0.5, start, start + 1.5,
             start + life, start + life, life * 0.6, "H100" if gpu else None, 1 if gpu else 0, prices, rate),
        )  # fmt: skip
    for i in range(n_calls):
        fid, _ = funcs[i % len(funcs)]
        cid, at = f"fc-bench{i:08d}", now - 7 * 86400 * i / n_calls
        tx.execute(
            "INSERT INTO calls (id, function_id, kind, created_at, inputs_total, inputs_added, outputs_done, "
            "busy_s, cost) VALUES (?, ?, 'map', ?, 1, 1, 1, 0.5, 0.00001)",
            (cid, fid, at),
        )
        failed = i % 20 == 0  # one call in 20 failed
        tx.execute(
            "INSERT INTO inputs (call_id, idx, function_id, state, attempt, created_at) "
            "VALUES (?, 0, ?, 'done', ?, ?)",
            (cid, fid, 2 if failed else 1, at),
        )
        tx.execute(
            "INSERT INTO outputs (call_id, idx, part, input_seq, status, data, error, duration, created_at) "
            "VALUES (?, 0, -1, 0, ?, NULL, ?, 0.5, ?)",
            (cid, "failure" if failed else "success",
             '{"type": "ValueError", "message": "bad input"}' if failed else None, at + 0.6),
        )  # fmt: skip


def render(st: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Metering: call path overhead and usage reads",
        "",
        "Metering counts each container's busy time and each call's cost in the transactions that lease "
        "and finish inputs (ADR 0015). Sequential `f.remote(x)` round trips of a trivial function on a "
        f"warm container, {st['round_trips']} each way in alternating blocks (control plane in the "
        "benchmark's process, one worker on the `process` runtime)."
        + (f" Measured {st['measured_at']}." if st.get("measured_at") else ""),
        "",
    ]
    cp = st.get("call_path") or {}
    if cp.get("status") != "ok":
        lines.append(f"Call path: {cp.get('status', 'not run')} {cp.get('error', '')}".rstrip())
    else:
        head = ["Metering", "p50 ms", "p90 ms", "p99 ms", "mean ms"]
        lines += [row(head), row(["---"] * len(head))]
        for key, label in (("off", "off (`VIVACE_METERING=0`)"), ("on", "on (the default)")):
            r = cp[key]
            lines.append(row([label, *(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"))]))
        delta = cp["on"]["p50_ms"] - cp["off"]["p50_ms"]
        lines += ["", f"Difference at p50: {delta:+.2f} ms per round trip."]
    q = st.get("queries") or {}
    lines += [
        "",
        f"Usage reads over HTTP with {st['containers']:,} metered containers (10 apps, the last 7 days) and "
        f"{st['calls']:,} calls in the store (SQLite), median of 7:",
        "",
    ]
    if q.get("status") != "ok":
        lines.append(f"Queries: {q.get('status', 'not run')} {q.get('error', '')}".rstrip())
    else:
        head = ["Query", "p50 ms", "max ms", "Rows"]
        lines += [row(head), row(["---"] * len(head))]
        for label, r in q["rows"].items():
            lines.append(row([label, f"{r['p50_ms']:.1f}", f"{r['max_ms']:.1f}", str(r["result_rows"])]))
    return [*lines, ""]
