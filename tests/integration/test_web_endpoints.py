"""Web endpoints through the real gateway, worker and containers, with a real HTTP client: every kind of
endpoint answers at its URL, bad requests get the right 4xx, responses stream, big bodies pass both
ways, a slow request ends in 504, proxy auth holds, host routing works, and ``@concurrent`` lets one
container serve held-open requests at once."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

import vivace
from vivace import exception as exc
from vivace.protocol.versions import VERSION_HEADER

APPS = Path(__file__).parent / "apps"


@pytest.fixture(scope="module")
def web(app_loader: Any) -> Iterator[Any]:
    sys.modules.pop("webapp", None)
    mod = app_loader("webapp")
    with mod.app.run():
        yield mod


def test_every_kind_of_endpoint_answers_at_its_url(web: Any) -> None:
    url = web.hello.get_web_url()
    assert url.endswith("/web/webtest-hello-dev/")
    assert httpx.get(url, params={"name": "ada"}, timeout=120).json() == {"hello": "ada", "container": True}
    add = web.add.get_web_url()
    assert "/web/webtest-typed-dev/" in add  # its label=
    assert httpx.post(add, json={"values": [1, 2, 3]}, timeout=120).json() == {"sum": 6, "size": 0}
    assert httpx.get(add, timeout=120).status_code == 405  # fastapi_endpoint(method="POST")
    wsgi = httpx.get(web.classic.get_web_url() + "a/b?c=d", timeout=120)
    assert (wsgi.status_code, wsgi.headers["x-kind"], wsgi.text) == (201, "wsgi", "GET /a/b?c=d")
    served = httpx.get(web.files.get_web_url() + "hello.txt", timeout=120)
    assert (served.status_code, served.text) == (200, "served by http.server\n")
    predict = web.Model().predict.get_web_url()
    assert httpx.get(predict, params={"x": 2}, timeout=120).json() == {"y": 84}  # after @enter
    assert web.Model().plain.remote() == 42
    where = httpx.get(web.streaming.get_web_url() + "where?a=1", cookies={"k": "v"}, timeout=120).json()
    assert where["path"].endswith("/web/webtest-streaming-dev/where")
    assert where["root_path"].endswith("/web/webtest-streaming-dev")
    assert (where["query"], where["cookies"]) == ("a=1", {"k": "v"})
    jar = httpx.get(web.streaming.get_web_url() + "cookies", timeout=120)
    assert jar.headers.get_list("set-cookie") == ["a=1; Path=/; SameSite=lax", "b=2; Path=/; SameSite=lax"]
    boom = httpx.get(web.streaming.get_web_url() + "boom", timeout=120)
    assert (boom.status_code, boom.text) == (500, "Internal Server Error")  # the app's own 500
    assert web.hello.remote("direct")["hello"] == "direct"  # a fastapi_endpoint is a function too
    with pytest.raises(exc.InvalidError, match="get_web_url"):
        web.streaming.remote()


def test_bad_requests_get_the_right_4xx(web: Any, cluster: Any) -> None:
    missing = httpx.get(f"{cluster.url}/web/no-such-endpoint/", timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    bad_json = httpx.post(
        web.add.get_web_url(), content=b"{nope", headers={"content-type": "application/json"}, timeout=120
    )
    assert bad_json.status_code == 422 and bad_json.json()["detail"][0]["type"] == "json_invalid"
    wrong_type = httpx.post(web.add.get_web_url(), json=[1, 2], timeout=120)
    assert wrong_type.status_code == 422
    # a declared length over the limit is refused before any of the body is read
    parts = urlsplit(web.add.get_web_url())
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(
            f"POST {parts.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {65 << 20}\r\n"
            "Content-Type: application/json\r\n\r\n".encode()
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 413")

    def chunks() -> Iterator[bytes]:  # no length given: counted as it arrives
        for _ in range(66):
            yield b"x" * (1 << 20)

    streamed = httpx.post(web.streaming.get_web_url() + "echo", content=chunks(), timeout=120)
    assert streamed.status_code == 413 and streamed.json()["code"] == "too_large"


def test_responses_stream_as_the_app_sends_them(web: Any) -> None:
    queue = f"gate-{uuid.uuid4().hex[:8]}"
    url = web.streaming.get_web_url() + "gate"
    with httpx.stream("GET", url, params={"queue": queue}, timeout=120) as r:
        lines = r.iter_lines()
        assert next(lines) == "before"  # arrives while the app still waits for the test
        vivace.Queue.from_name(queue, create_if_missing=True).put("go")
        assert next(lines) == "after"
    with httpx.stream("GET", web.streaming.get_web_url() + "events", params={"n": 3, "delay": 0.05}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert [line for line in r.iter_lines() if line] == ["data: 0", "data: 1", "data: 2"]


def test_big_bodies_pass_both_ways(web: Any) -> None:
    body = bytes(range(256)) * (40 << 12)  # 40 MiB
    up = httpx.post(web.streaming.get_web_url() + "echo", content=body, timeout=120).json()
    assert up == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    down = httpx.get(web.streaming.get_web_url() + "big", params={"mib": 5}, timeout=120)
    assert down.status_code == 200 and down.content == b"x" * (5 << 20)


def test_a_request_past_the_function_timeout_gets_504(web: Any) -> None:
    slow = httpx.post(web.add.get_web_url(), json={"values": [1], "sleep": 6}, timeout=120)
    assert slow.status_code == 504 and slow.json()["code"] == "endpoint_timeout"
    assert httpx.post(web.add.get_web_url(), json={"values": [2]}, timeout=120).json()["sum"] == 2


def test_proxy_auth_takes_a_proxy_token_and_nothing_else(web: Any, cluster: Any) -> None:
    url = web.private.get_web_url()
    assert httpx.get(url, timeout=120).status_code == 401
    user = {"Modal-Key": cluster.creds["token_id"], "Modal-Secret": cluster.creds["token_secret"]}
    assert httpx.get(url, headers=user, timeout=120).status_code == 401  # a user token is not a proxy token

    made = subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", "token", "new", "--kind", "proxy", "--label", "web test"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert made.returncode == 0 and "Modal-Key" in made.stderr, made.stderr
    fields = dict(line.split(":", 1) for line in made.stdout.splitlines())
    token = {"token_id": fields["token id"].strip(), "token_secret": fields["token secret"].strip()}
    headers = {"Modal-Key": token["token_id"], "Modal-Secret": token["token_secret"]}
    ok = httpx.get(url, headers=headers, timeout=120)
    assert (ok.status_code, ok.json()) == (200, "secret stuff")
    assert httpx.get(url, headers={**headers, "Modal-Secret": "ts-wrong"}, timeout=120).status_code == 401
    api = httpx.get(
        f"{cluster.url}/v1/apps",
        headers={
            "authorization": f"Bearer {token['token_id']}:{token['token_secret']}",
            VERSION_HEADER: vivace.__version__,
        },
        timeout=30,
    )
    assert api.status_code == 403  # a proxy token opens endpoints, not the API


def test_endpoints_answer_by_host_name_under_the_web_domain(web: Any, cluster: Any) -> None:
    cluster.config.web_domain = f"vivace.test:{cluster.port}"
    try:
        assert web.hello.get_web_url() == f"http://webtest-hello-dev.vivace.test:{cluster.port}/"
        headers = {"host": f"webtest-hello-dev.vivace.test:{cluster.port}"}
        r = httpx.get(f"{cluster.url}/?name=host", headers=headers, timeout=120)
        assert r.json()["hello"] == "host"
        r = httpx.get(f"{cluster.url}/", headers={"host": f"nothing.vivace.test:{cluster.port}"}, timeout=30)
        assert r.status_code == 404
        assert httpx.get(f"{cluster.url}/healthz", timeout=30).status_code == 200  # the API is unchanged
    finally:
        cluster.config.web_domain = None


def test_a_concurrent_endpoint_serves_held_requests_at_once_in_one_container(web: Any) -> None:
    queue = f"gate-{uuid.uuid4().hex[:8]}"
    url = web.streaming.get_web_url() + "gate"
    first_lines: list[str] = []
    bodies: list[str] = []
    started = threading.Barrier(6)

    def one() -> None:
        with httpx.stream("GET", url, params={"queue": queue}, timeout=120) as r:
            lines = r.iter_lines()
            first_lines.append(next(lines))
            started.wait(timeout=100)
            bodies.append(next(lines))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    started.wait(timeout=100)  # five requests in flight at once, with max_containers=1
    q = vivace.Queue.from_name(queue, create_if_missing=True)
    for _ in range(5):
        q.put("go")
    for t in threads:
        t.join(timeout=100)
    assert first_lines == ["before"] * 5 and bodies == ["after"] * 5


def test_deploy_prints_each_endpoints_url(cluster: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", "deploy", str(APPS / "webrestart.py"), "--name", "webdeployed"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ), cwd=APPS,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    functions, web_part = out.stdout.split("Web endpoints:")
    assert "ping  fu-" in functions
    ((name, url),) = [line.split() for line in web_part.strip().splitlines()]
    assert name == "ping"
    assert url == f"{cluster.url}/web/webdeployed-ping/"  # deployed: no -dev
    assert httpx.get(url, timeout=120).json().startswith("fc-")
    assert vivace.Function.from_name("webdeployed", "ping").get_web_url() == url
    vivace.App.lookup("webdeployed").stop()


def test_a_restarted_app_takes_over_its_url_at_once(app_loader: Any) -> None:
    sys.modules.pop("webrestart", None)
    mod = app_loader("webrestart")
    with mod.app.run():
        url = mod.ping.get_web_url()
        assert httpx.get(url, timeout=120).status_code == 200  # the gateway now caches this route
    with mod.app.run():  # a new app at the same URL, within the cache's second
        assert mod.ping.get_web_url() == url
        again = httpx.get(url, timeout=120)
        assert again.status_code == 200, again.text
    assert httpx.get(url, timeout=120).status_code == 404  # stopped: nothing serves it


def test_websockets_carry_text_and_bytes_both_ways_until_either_side_closes(web: Any) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    url = web.streaming.get_web_url().replace("http://", "ws://") + "ws"
    with connect(url, subprotocols=["chat"], open_timeout=120) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat"
        for i in range(3):
            ws.send(f"hi {i}")
            assert ws.recv(timeout=60) == f"echo hi {i}"
        ws.send(b"\x00\x01\x02" * 1000)
        assert ws.recv(timeout=60) == b"\x02\x01\x00" * 1000
        ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=60)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    with connect(url, open_timeout=120) as ws:  # the client closes first: the app sees it and ends
        ws.send("one")
        assert ws.recv(timeout=60) == "echo one"
    with pytest.raises(InvalidStatus) as refused:  # an endpoint that is not an ASGI app
        connect(web.hello.get_web_url().replace("http://", "ws://"), open_timeout=60).close()
    assert refused.value.response.status_code == 400
    assert b"only an asgi_app endpoint takes WebSockets" in refused.value.response.body


def _web_calls(cluster: Any, function_id: str) -> int:
    with sqlite3.connect(cluster.home / "vivace.db") as db:
        (n,) = db.execute(
            "SELECT COUNT(*) FROM calls WHERE kind = 'web' AND function_id = ?", (function_id,)
        ).fetchone()
    return int(n)


def test_delivered_responses_are_not_kept_and_a_client_that_leaves_cancels_its_request(
    web: Any, cluster: Any
) -> None:
    for i in range(5):
        assert httpx.get(web.hello.get_web_url(), params={"name": str(i)}, timeout=120).status_code == 200
    deadline = time.monotonic() + 30
    while _web_calls(cluster, web.hello.object_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _web_calls(cluster, web.hello.object_id) == 0  # the reaper deleted them
    queue = f"left-{uuid.uuid4().hex[:8]}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(web.streaming.get_web_url() + "sleep", params={"seconds": 60, "queue": queue}, timeout=2)
    got = vivace.Queue.from_name(queue, create_if_missing=True).get(timeout=30)
    assert got == "cancelled"
