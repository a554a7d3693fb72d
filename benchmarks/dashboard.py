"""The dashboard's page loads with a full store: 10,000 calls (each with its input and output) and 1,000
metered containers of 10 apps, in SQLite, on a control plane in this process.

Each page is opened in headless Chromium (Debian's ``chromium`` driven by Playwright, as the browser
tests do) and timed from navigation until its table or chart is on screen, signed in through the
dashboard's own login; the median of several loads. The API requests behind each page are timed on
their own too (over HTTP, the median of several).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.config import RunConfig
from benchmarks.markdown import row
from benchmarks.stats import latency_summary

# page -> (route, what shows it is drawn, the API requests it makes)
PAGES: dict[str, tuple[str, str, list[tuple[str, dict[str, Any]]]]] = {
    "Apps": ("#/apps", "main table", [("/v1/apps", {"all": 1})]),
    "Calls (newest 200)": ("#/calls", "main table", [("/v1/calls", {"limit": 200})]),
    "Containers (newest 500)": ("#/containers", "main table", [("/v1/containers", {"all": 1})]),
    "Usage (30 days, 3 charts' data)": (
        "#/usage",
        ".chart svg rect",
        [
            ("/v1/usage", {"by": "app,day"}),
            ("/v1/usage", {"by": "function,day"}),
            ("/v1/usage", {"by": "gpu,day"}),
        ],
    ),
}
LOADS = 5


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.cluster import local_cluster
    from benchmarks.metering import _seed, sizes_for

    _, _, n_containers, n_calls = sizes_for(config)
    out: dict[str, Any] = {"containers": n_containers, "calls": n_calls, "loads": LOADS, "rows": {},
                           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="vivace-bench-dashboard-") as tmp,
        local_cluster(Path(tmp) / "home", warm_pool=None, runtimes=["process"]) as cluster,
    ):
        cluster.plane.store.write_sync(lambda tx: _seed(tx, n_containers, n_calls))
        log(f"dashboard: {len(PAGES)} pages over {n_calls:,} calls and {n_containers:,} containers")
        try:
            api = _api_times(cluster)
        except Exception as err:  # reported, never left blank
            out["status"] = "error"
            out["error"] = str(err)
            return out
        try:
            pages = _page_times(cluster)
        except Exception as err:
            pages = {name: {"status": "error", "error": str(err)} for name in PAGES}
        for name in PAGES:
            out["rows"][name] = {"api": api[name], "page": pages[name]}
        out["status"] = "ok"
    return out


def _api_times(cluster: Any) -> dict[str, Any]:
    import httpx

    from vivace._version import __version__

    since = time.time() - 30 * 86400
    headers = {"authorization": f"Bearer {cluster.user_token}", "x-vivace-version": __version__}
    found: dict[str, Any] = {}
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=120) as http:
        for name, (_, _, requests) in PAGES.items():
            times = []
            for _ in range(LOADS):
                began = time.perf_counter()
                for path, params in requests:
                    p = {**params, "since": since} if path == "/v1/usage" else params
                    http.get(path, params=p).raise_for_status()
                times.append(time.perf_counter() - began)
            found[name] = latency_summary(times)
    return found


def _page_times(cluster: Any) -> dict[str, Any]:
    import httpx
    from playwright.sync_api import sync_playwright

    from vivace._version import __version__

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    headers = {"authorization": f"Bearer {cluster.user_token}", "x-vivace-version": __version__}
    found: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        path = httpx.post(f"{cluster.url}/v1/dashboard/login", headers=headers, timeout=30).json()["path"]
        page.goto(cluster.url + path)
        page.wait_for_selector("main table", timeout=60_000)
        for name, (route, ready, _) in PAGES.items():
            times = []
            for _ in range(LOADS):
                page.goto("about:blank")
                began = time.perf_counter()
                page.goto(f"{cluster.url}/dashboard/{route}")
                page.wait_for_selector(ready, timeout=120_000)
                times.append(time.perf_counter() - began)
            found[name] = {"status": "ok", **latency_summary(times)}
        browser.close()
    return found


def render(st: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Dashboard: page loads with a full store",
        "",
        f"{st['calls']:,} calls (each with its input and final output) and {st['containers']:,} metered "
        "containers of 10 apps in the store (SQLite). Each page opened in headless Chromium (Debian's, "
        "through Playwright), signed in with the dashboard's login, timed from navigation until its table or "
        f"chart is drawn; and the API requests behind it, over HTTP. Median of {st['loads']} loads."
        + (f" Measured {st['measured_at']}." if st.get("measured_at") else ""),
        "",
    ]
    if st.get("status") != "ok":
        return [*lines, f"Not measured: {st.get('status', '?')} {st.get('error', '')}".rstrip(), ""]
    head = ["Page", "Page load p50 ms", "max ms", "Its API requests p50 ms"]
    lines += [row(head), row(["---"] * len(head))]
    for name, r in st["rows"].items():
        page, api = r["page"], r["api"]
        if page.get("status") != "ok":
            lines.append(
                row([name, page.get("status", "?"), page.get("error", "")[:60], f"{api['p50_ms']:.1f}"])
            )
            continue
        lines.append(row([name, f"{page['p50_ms']:.0f}", f"{page['max_ms']:.0f}", f"{api['p50_ms']:.1f}"]))
    return [*lines, ""]
