"""Logs through the real control plane and worker: lines keep their container, call and input, the
platform's lines tell a container's life, `vivace app logs` filters by function, call, time, text and
stream, and retention deletes old lines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def logged(app_loader: Any) -> Iterator[Any]:
    module = app_loader("logged")
    with module.app.run():
        yield module


def _lines(user_http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    return list(user_http.get("/v1/logs", params=params).json()["lines"])


def _until(what: str, pred: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_lines_carry_their_call_and_filters_find_them(logged: Any, user_http: httpx.Client) -> None:
    call = logged.shout.spawn("alpha")
    assert call.get(timeout=60) == "alpha"
    logged.whisper.remote("beta")
    app_id = logged.app.app_id
    (line,) = _until("the shout line", lambda: _lines(user_http, call=call.object_id, stream="stdout"))
    assert line["line"].startswith("shout alpha from ta-") and line["call_id"] == call.object_id
    assert line["input_seq"] is not None and line["container_id"] == line["line"].rsplit(" ", 1)[1]
    _until("the whisper line", lambda: _lines(user_http, app=app_id, function="whisper", stream="stdout"))
    # the platform's lines: the container came up (with its phases) and became ready
    platform = [r["line"] for r in _lines(user_http, container=line["container_id"], stream="platform")]
    assert any(" up on worker " in p and "(placed " in p for p in platform), platform
    assert any(" ready " in p for p in platform), platform
    # the CLI: by function, by call, by stream, by text, by time
    out = run_cli("app", "logs", app_id, "--function", "whisper")
    assert "whisper beta" in out.stdout and "shout" not in out.stdout
    by_call = run_cli("app", "logs", app_id, "--call", call.object_id).stdout
    assert "shout alpha" in by_call and "whisper" not in by_call
    lifecycle = run_cli("app", "logs", app_id, "--stream", "platform")
    assert "[vivace] container " in lifecycle.stderr and lifecycle.stdout == ""
    assert "shout alpha" in run_cli("app", "logs", app_id, "--search", "alpha", "--since", "10m").stdout
    assert run_cli("app", "logs", app_id, "--until", "2000-01-01").stdout == ""
    assert "shout alpha" in run_cli("container", "logs", line["container_id"], "--stream", "stdout").stdout


def test_bad_log_queries_get_clear_errors(logged: Any, user_http: httpx.Client) -> None:
    app_id = logged.app.app_id
    for params, status in (
        ({}, 422),
        ({"app": app_id, "stream": "stdout,nope"}, 422),
        ({"app": app_id, "since": "yesterday"}, 422),
        ({"call": "fc-nope"}, 404),
        ({"container": "ta-nope"}, 404),
        ({"app": app_id, "function": "nope"}, 404),
    ):
        r = user_http.get("/v1/logs", params=params)
        assert r.status_code == status, (params, r.text)
    bad = run_cli("app", "logs", app_id, "--since", "last week", ok=False)
    assert "duration ago" in bad.stderr
    assert "--stream" in run_cli("app", "logs", app_id, "--stream", "loud", ok=False).stderr


def test_retention_deletes_lines_older_than_it(cluster: Any, logged: Any, user_http: httpx.Client) -> None:
    logged.whisper.remote("gamma")
    app_id = logged.app.app_id
    _until("gamma", lambda: _lines(user_http, app=app_id, search="whisper gamma"))
    time.sleep(1.1)
    # what the storage loop does each minute with --log-retention 1s
    from vivace.server.services import logs

    deleted = cluster.plane.store.write_sync(lambda tx: logs.expire(tx, tx.now - 1.0))
    assert deleted > 0
    assert _lines(user_http, app=app_id, search="whisper gamma") == []
