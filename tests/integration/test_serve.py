"""``vivace serve``: the app runs while the command does, restarts as a new app when a file beside it
changes (the old one stopped), keeps running unchanged with ``--no-reload``, and stops with the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from vivace._sdk.connection import get_client
from vivace._sync import run_sync

SOURCE = """
import vivace

app = vivace.App({name!r})


@app.function()
def f():
    return {value!r}
"""


def _apps(name: str) -> list[dict[str, Any]]:
    async def go() -> Any:
        api = await get_client()
        return (await api.request("GET", "/v1/apps", params={"all": 1})).json()["apps"]

    return [a for a in run_sync(go()) if a["name"] == name]


def _wait(pred: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _running(name: str) -> list[str]:
    return [a["app_id"] for a in _apps(name) if a["state"] != "stopped"]


def _serve(path: Path, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vivace.cli.main", "serve", *flags, str(path)],
        env=dict(os.environ), cwd=path.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _edit(path: Path, name: str, value: str) -> None:
    path.write_text(SOURCE.format(name=name, value=value))
    later = time.time() + 2  # a different mtime even on a coarse clock
    os.utime(path, (later, later))


def test_serve_restarts_on_change_and_stops_with_the_command(cluster: Any, tmp_path: Path) -> None:
    name = f"served-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "served_app.py"
    path.write_text(SOURCE.format(name=name, value="one"))
    proc = _serve(path)
    try:
        (first,) = _wait(lambda: _running(name), "the served app to start")
        _edit(path, name, "two")
        second = _wait(lambda: [a for a in _running(name) if a != first], "a new app after the change")
        states = {a["app_id"]: a["state"] for a in _apps(name)}
        assert states[first] == "stopped" and len(second) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1].decode(errors="replace")
    assert "restarting the app" in err
    _wait(lambda: not _running(name), "the app to stop with the command", 30)


def test_no_reload_keeps_the_app(cluster: Any, tmp_path: Path) -> None:
    name = f"served-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "fixed_app.py"
    path.write_text(SOURCE.format(name=name, value="one"))
    proc = _serve(path, "--no-reload")
    try:
        (first,) = _wait(lambda: _running(name), "the served app to start")
        _edit(path, name, "two")
        time.sleep(4)  # a reloading serve looks every second
        assert _running(name) == [first]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    _wait(lambda: not _running(name), "the app to stop with the command", 30)
