"""Control plane scale: a million inputs queued with one ``spawn_map``, and what it costs the server.

The control plane runs as users run it (``vivace server``: its own process, SQLite store under a
temporary home, no worker, so every input stays queued); this process is the client. Figures: the
time ``f.spawn_map(range(N))`` takes to return (every input acknowledged), inputs per second, the
server's resident memory after it and at its peak (``VmRSS``/``VmHWM``), the store's size on disk
(database, WAL and shared-memory files) per input, and the latency of queueing one more input
(``f.spawn(1)``) with an empty queue and with N queued. The queued count is checked in the store.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks import driver, procs
from benchmarks.config import RunConfig
from benchmarks.markdown import fmt_ms, row
from benchmarks.stats import latency_summary

SPAWNS = 20
"""Single-input ``spawn`` calls timed before and after the big map."""


def inputs_for(config: RunConfig) -> int:
    return 100_000 if config.mode == "quick" else 1_000_000


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    n = inputs_for(config)
    home = Path(tempfile.mkdtemp(prefix="vivace-scale-"))
    out: dict[str, Any] = {"inputs": n, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    server: subprocess.Popen[bytes] | None = None
    try:
        server, url = _start_server(home)
        import vivace

        out["version"] = vivace.__version__
        out["server_rss_start_mib"] = _rss(server.pid)["VmRSS"]
        with _client(home, url):
            sys.modules.pop("benchmarks.scale_app", None)
            import benchmarks.scale_app as app

            with app.app.run():
                out["spawn_empty"] = _spawns(app.noop)
                log(f"scale: spawn_map of {n:,} inputs")
                started = time.perf_counter()
                call = app.noop.spawn_map(range(n))
                out["spawn_map_s"] = time.perf_counter() - started
                out["per_s"] = n / out["spawn_map_s"]
                log(f"scale: {n:,} queued in {out['spawn_map_s']:.1f} s ({out['per_s']:,.0f}/s)")
                out["queued"] = _queued(home / "vivace.db", call.object_id)
                rss = _rss(server.pid)
                out["server_rss_mib"], out["server_peak_rss_mib"] = rss["VmRSS"], rss["VmHWM"]
                out["store_bytes"] = _store_bytes(home)
                out["spawn_full"] = _spawns(app.noop)
                stopping = time.perf_counter()
            out["app_stop_s"] = time.perf_counter() - stopping
        if out["queued"] != n:
            raise RuntimeError(f"{out['queued']:,} inputs queued in the store, not {n:,}")
        out["status"] = "ok"
    except Exception as err:  # the figures so far are kept
        out["status"] = "error"
        out["error"] = f"{type(err).__name__}: {err}"
    finally:
        if server is not None:
            _stop(server)
        shutil.rmtree(home, ignore_errors=True)
    return out


def _start_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (home / "server.log").open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "vivace.cli.main", "server", "--home", str(home), "--port", str(port)],
        env={**os.environ, "VIVACE_HOME": str(home)},
        cwd=driver.REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            tail = (home / "server.log").read_text(errors="replace")[-800:]
            raise RuntimeError(f"vivace server exited {server.returncode}: {tail}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return server, url
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("vivace server did not answer /healthz in 60 s") from None
            time.sleep(0.1)


class _client:
    """Points this process's Vivace client at the server for the block."""

    def __init__(self, home: Path, url: str) -> None:
        creds = json.loads((home / "credentials.json").read_text())
        self.env = {
            "VIVACE_SERVER_URL": url,
            "VIVACE_TOKEN_ID": creds["token_id"],
            "VIVACE_TOKEN_SECRET": creds["token_secret"],
        }

    def __enter__(self) -> None:
        from vivace import _sync
        from vivace._sdk import connection

        os.environ.update(self.env)
        _sync.run_sync(connection.reset_client())

    def __exit__(self, *exc: object) -> None:
        from vivace import _sync
        from vivace._sdk import connection

        for key in self.env:
            os.environ.pop(key, None)
        _sync.run_sync(connection.reset_client())


def _spawns(fn: Any) -> dict[str, Any]:
    samples = []
    for _ in range(SPAWNS + 1):  # the first is untimed
        start = time.perf_counter()
        fn.spawn(1)
        samples.append(time.perf_counter() - start)
    return latency_summary(samples[1:])


def _queued(db: Path, call_id: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM inputs WHERE call_id = ? AND state = 'pending'", (call_id,)
        ).fetchone()
    return int(count)


def _rss(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of a process, in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def _store_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("vivace.db*") if p.is_file())


def _stop(server: subprocess.Popen[bytes]) -> None:
    procs.stop(server)
    if procs.have_proc():
        procs.terminate(lambda: procs.session_members(server.pid))


def render(sc: Mapping[str, Any]) -> list[str]:
    n = sc["inputs"]
    lines = [
        "## Control plane scale: a million queued inputs",
        "",
        f"`f.spawn_map(range({n:,}))` against `vivace server` (its own process, the SQLite store, no "
        "worker, so every input stays queued), from a client on the same machine; the count of queued "
        "inputs is checked in the store afterwards. Memory is the server process's resident set; the "
        "store is the database with its WAL and shared-memory files. One run."
        + (f" Measured {sc['measured_at']}." if sc.get("measured_at") else ""),
        "",
    ]
    if sc.get("status") != "ok":
        lines += [f"Not measured completely: {sc.get('status')} ({sc.get('error', '')}).", ""]
    if "spawn_map_s" not in sc:
        return lines
    head = ["What", "Figure"]
    store = sc.get("store_bytes")
    rows = [
        (f"`spawn_map` of {n:,} inputs returns", f"{sc['spawn_map_s']:.1f} s ({sc['per_s']:,.0f} inputs/s)"),
        ("inputs found queued in the store", f"{sc.get('queued', 0):,}"),
        ("server memory (RSS) at start", f"{sc['server_rss_start_mib']:.0f} MiB"),
        (f"server memory (RSS) with {n:,} queued / peak", f"{sc['server_rss_mib']:.0f} / "
         f"{sc['server_peak_rss_mib']:.0f} MiB"),
        ("store on disk", f"{store / 2**20:,.0f} MiB ({store / n:,.0f} bytes per input)" if store else "—"),
    ]  # fmt: skip
    for key, label in (("spawn_empty", "empty queue"), ("spawn_full", f"{n:,} queued")):
        r = sc.get(key)
        if r:
            rows.append((f"`f.spawn(1)`, {label}: p50 / p99 ({r['n']} calls)",
                         f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])} ms"))  # fmt: skip
    if "app_stop_s" in sc:
        rows.append(
            (
                f"leaving `app.run()` (the app stops; its {n:,} inputs are cancelled)",
                f"{sc['app_stop_s']:.1f} s",
            )
        )
    lines += [row(head), row(["---"] * 2), *(row([a, b]) for a, b in rows), ""]
    return lines
