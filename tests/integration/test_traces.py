"""OpenTelemetry spans through the real control plane: with an OTLP endpoint configured, each call's
trace and each container start reach a collector (a small OTLP/HTTP server on loopback here), once,
even when the collector refused the first tries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import sdk_pointed_at

from vivace.server import plane as plane_module
from vivace.testing.cluster import LocalCluster

pytestmark = pytest.mark.timeout(120)


class Collector:
    """Takes OTLP/JSON exports; refuses the first ``refuse`` with 503."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.spans: list[dict[str, Any]] = []
        self.refused = 0
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if outer.refused < outer.refuse:
                    outer.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                for rs in json.loads(body)["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        outer.spans += ss["spans"]
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalCluster, Collector]]:
    collector = Collector(refuse=2)
    monkeypatch.setattr(plane_module, "OTLP_INTERVAL", 0.3)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=ml%20infra")
    c = LocalCluster(tmp_path / "home", runtimes=["process"])
    c.config.otlp_endpoint = collector.url
    try:
        with c, sdk_pointed_at(c):
            yield c, collector
    finally:
        collector.close()


def test_each_call_and_container_start_is_exported_once(traced: tuple[LocalCluster, Collector]) -> None:
    import vivace

    _, collector = traced
    app = vivace.App("traced")

    @app.function(serialized=True)
    def double(x: int) -> int:
        return 2 * x

    with app.run():
        assert list(double.map(range(3))) == [0, 2, 4]
        assert double.remote(5) == 10
    deadline = time.monotonic() + 30
    while sum(s["name"] == "call traced.double" for s in collector.spans) < 2:
        assert time.monotonic() < deadline, [s["name"] for s in collector.spans]
        time.sleep(0.2)
    time.sleep(1.0)  # a second export would repeat them: none may come
    roots = [s for s in collector.spans if s["name"] == "call traced.double"]
    assert len(roots) == 2 and collector.refused == 2  # the refused exports were tried again
    traces_ = {r["traceId"] for r in roots}
    inputs = [s for s in collector.spans if s["name"].startswith("input ")]
    assert len(inputs) == 4 and {s["traceId"] for s in inputs} == traces_
    assert sum(s["name"] == "run" for s in collector.spans) == 4
    assert any(s["name"].startswith("container start") for s in collector.spans)
    assert collector.headers[0].get("x-team") == "ml infra"
