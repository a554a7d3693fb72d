"""Web endpoints: requests per second and latency through the gateway, beside the same FastAPI route
under plain uvicorn on this machine, and the time to the first response from zero containers.

- **Vivace**: the endpoint of ``web_app.py`` (``max_containers=4``, one request at a time per
  container) deployed on a control plane in this process with one worker on the ``process`` runtime
  (the FastAPI of this environment: crun's base image has no FastAPI until an image installs it), warmed
  by one untimed load run. The load: ``clients`` concurrent keep-alive clients sending GETs back to back
  for ``seconds`` (``vivace.testing.load``, in a process of its own).
- **Peer**: ``uvicorn benchmarks.web_app:plain --factory`` (one process, its defaults), same load.
- **Cold**: a fresh ephemeral app each sample (``app.run()``, not timed), then one GET timed until its
  response: the request waits in the backlog while the container starts and loads FastAPI.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks import driver
from benchmarks.config import RunConfig
from benchmarks.markdown import row
from benchmarks.stats import latency_summary


def sizes_for(config: RunConfig) -> tuple[int, float, int]:
    """(clients, seconds per load run, cold samples)."""
    return (16, 5.0, 3) if config.mode == "quick" else (32, 20.0, 8)


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from vivace.testing.load import load_in_subprocess

    clients, seconds, cold_n = sizes_for(config)
    out: dict[str, Any] = {"clients": clients, "seconds": seconds, "rows": {},
                           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    rows = out["rows"]
    log(f"web: plain uvicorn, {clients} clients for {seconds:g} s")
    try:
        rows["uvicorn"] = {"status": "ok", **_uvicorn(clients, seconds, load_in_subprocess)}
    except Exception as err:  # reported, never left blank
        rows["uvicorn"] = {"status": "error", "error": str(err)}
    log(f"web: Vivace gateway, {clients} clients for {seconds:g} s; {cold_n} cold starts")
    try:
        gateway, cold = _vivace(clients, seconds, cold_n, load_in_subprocess)
        rows["vivace"] = {"status": "ok", **gateway}
        rows["vivace-cold"] = {"status": "ok", **latency_summary(cold)}
    except Exception as err:
        rows["vivace"] = {"status": "error", "error": str(err)}
    return out


def _uvicorn(clients: int, seconds: float, load: Any) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.web_app:plain", "--port", str(port),
         "--log-level", "warning"],
        cwd=driver.REPO_ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        load(url, clients, 2.0)  # warm-up, untimed
        return dict(load(url, clients, seconds))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _vivace(clients: int, seconds: float, cold_n: int, load: Any) -> tuple[dict[str, Any], list[float]]:
    import httpx

    from benchmarks.cluster import local_cluster

    sys.path.insert(0, str(Path(__file__).parent))
    import web_app

    with (
        tempfile.TemporaryDirectory(prefix="vivace-bench-web-") as tmp,
        local_cluster(Path(tmp) / "home", warm_pool=None, runtimes=["process"]),
    ):
        cold: list[float] = []
        for _ in range(cold_n):
            with web_app.app.run():
                url = web_app.endpoint.get_web_url()
                began = time.perf_counter()
                r = httpx.get(url, timeout=300)
                cold.append(time.perf_counter() - began)
                if r.status_code != 200:
                    raise RuntimeError(f"cold request: {r.status_code} {r.text[:200]}")
        web_app.app.deploy("bench-web")
        url = web_app.endpoint.get_web_url()
        load(url, clients, 5.0)  # warm-up, untimed: containers up to max_containers
        return dict(load(url, clients, seconds)), cold


ROWS = {
    "uvicorn": "plain `uvicorn` (one process), same FastAPI route",
    "vivace": "Vivace gateway → input → container (`max_containers=4`)",
}


def render(st: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Web endpoints: gateway overhead and cold start",
        "",
        f"A trivial FastAPI GET endpoint under load: {st['clients']} concurrent keep-alive clients sending "
        f"requests back to back for {st['seconds']:g} s (a load generator in its own process), through "
        "Vivace's gateway (each request an input of the function, `max_containers=4`, containers on the "
        "`process` runtime) and under plain uvicorn on the same machine. The ratio of requests per "
        "second is the gateway's overhead; on 2 cores the load generator, the control plane, the worker "
        "and the containers share them."
        + (f" Measured {st['measured_at']}." if st.get("measured_at") else ""),
        "",
    ]
    rows = st.get("rows") or {}
    plain = rows.get("uvicorn", {})
    head = ["What", "Requests/s", "p50 ms", "p99 ms", "Errors", "Req/s vs uvicorn"]
    lines += [row(head), row(["---"] * len(head))]
    for key, label in ROWS.items():
        r = rows.get(key)
        if r is None:
            continue
        if r.get("status") != "ok":
            lines.append(row([label, r.get("status", "?"), "", "", "", r.get("error", "")[:80]]))
            continue
        ratio = f"{r['rps'] / plain['rps']:.2f}x" if plain.get("status") == "ok" and plain.get("rps") else "—"
        errors = sum(r["errors"].values())
        lines.append(
            row([label, f"{r['rps']:,.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", str(errors), ratio])
        )
    cold = rows.get("vivace-cold")
    if cold and cold.get("status") == "ok":
        lines += [
            "",
            f"Time to the first response from zero containers ({cold['n']} fresh apps): p50 "
            f"{cold['p50_ms']:.0f} ms, max {cold['max_ms']:.0f} ms (the container starts and imports "
            "FastAPI while the request waits).",
        ]
    return [*lines, ""]
