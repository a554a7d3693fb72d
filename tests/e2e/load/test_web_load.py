"""Load: 200 concurrent HTTP clients for 60 s against a deployed FastAPI endpoint with
``max_containers=4``, through the gateway, on loopback. Every request must succeed (a cold start or a
full backlog means waiting, never an error); the latency distribution is printed (and recorded in
docs/benchmarks.md by ``python -m benchmarks --bench web``). About 80 s."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vivace.testing.cluster import LocalCluster
from vivace.testing.load import load_in_subprocess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

APP = """
import vivace

app = vivace.App("web-load")


@app.function(max_containers=4)
@vivace.fastapi_endpoint()
def hello(name: str = "load"):
    return {"hello": name}
"""


def test_200_clients_for_60_seconds_get_no_errors(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    app_file = tmp_path / "src" / "web_load_app.py"
    app_file.write_text(APP)
    with LocalCluster(tmp_path / "home", runtimes=["process"]) as cluster:
        env = {**os.environ, **cluster.client_env()}
        deploy = subprocess.run(
            [sys.executable, "-m", "vivace.cli.main", "deploy", str(app_file)],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        url = next(line.split()[-1] for line in deploy.stdout.splitlines() if "/web/" in line)
        assert url.endswith("/web/web-load-hello/")
        summary: dict[str, Any] = load_in_subprocess(url, clients=200, seconds=60)
        print("web load:", json.dumps(summary))
        assert summary["errors"] == {} and summary["ok"] == summary["requests"] > 200
    with sqlite3.connect(tmp_path / "home" / "vivace.db") as db:  # every container it ever had
        (started,) = db.execute(
            "SELECT count(*) FROM containers c JOIN apps a ON a.id = c.app_id WHERE a.name = 'web-load'"
        ).fetchone()
    assert 1 <= started <= 4
