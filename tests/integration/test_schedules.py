"""Schedules through the real control plane: a Period fires while ``app.run()`` lasts, each tick its own
call, and stops with the app; the CLI shows each scheduled function's next run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import vivace
from vivace._sdk.connection import get_client
from vivace._sync import run_sync


def _get(path: str) -> Any:
    async def go() -> Any:
        api = await get_client()
        return (await api.request("GET", path)).json()

    return run_sync(go())


def test_a_period_fires_while_the_app_runs_and_stops_with_it(cluster: Any, app_loader: Any) -> None:
    name = f"ticks-{uuid.uuid4().hex[:10]}"
    os.environ["VIVACE_TEST_TICK_QUEUE"] = name
    try:
        sys.modules.pop("scheduled", None)
        mod = app_loader("scheduled")
    finally:
        os.environ.pop("VIVACE_TEST_TICK_QUEUE", None)
    queue = vivace.Queue.from_name(name, create_if_missing=True)
    seen: list[str] = []
    with mod.app.run():
        app_id = mod.app.app_id
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            item = queue.get(timeout=5)
            if item is not None:
                seen.append(item)
        assert len(seen) == 3, f"only {len(seen)} ticks in 60 s"
        assert len(set(seen)) == 3  # each tick is a call of its own
        out = subprocess.run(
            [sys.executable, "-m", "vivace.cli.main", "app", "schedules", app_id],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "every 1 s" in out.stdout and "cron 0 0 1 1 * (UTC)" in out.stdout
        assert f"{time.localtime().tm_year + 1}-01-01" in out.stdout  # new_year's next run
        api = _get(f"/v1/apps/{app_id}/schedules")
        rows = {r["name"]: r for r in api["schedules"]}
        assert rows["tick"]["last_tick"] is not None and rows["tick"]["next_run"] > rows["tick"]["last_tick"]
        assert rows["new_year"]["last_tick"] is None
    time.sleep(1.5)  # a tick that was already running may still land
    while queue.get(block=False) is not None:
        pass
    time.sleep(3)
    assert queue.len() == 0  # the app stopped: no more ticks
