"""Sandboxes at the edges, on a cluster whose only worker has no sandbox runtime (the process runtime):
bad SDK arguments and HTTP requests get typed errors, and a sandbox that no worker can run ends with the
reason instead of waiting forever."""

import httpx
import pytest

import vivace
from vivace import exception as exc
from vivace._version import __version__
from vivace.protocol import frames

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def app(cluster):
    return vivace.App.lookup("sandbox-api", create_if_missing=True)


@pytest.fixture(scope="module")
def http(cluster):
    headers = {"authorization": f"Bearer {cluster.user_token}", "x-vivace-version": __version__}
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=30) as c:
        yield c


def test_a_sandbox_no_worker_can_run_ends_with_the_reason(app):
    sb = vivace.Sandbox.create(app=app)
    with pytest.raises(exc.SandboxTerminatedError, match="runs under runsc, crun, runc"):
        sb.exec("python3", "-c", "pass")
    sb.wait(raise_on_termination=False)
    info = vivace.Sandbox.from_id(sb.object_id)._info
    assert info["result"] == "error" and "unschedulable" in info["reason"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": 10**9}, "timeout"),
        ({"idle_timeout": -1}, "idle_timeout"),
        ({"workdir": "relative"}, "absolute"),
        ({"name": "no spaces"}, "name"),
        ({"tags": {"k": 3}}, "tags"),
        ({"cpu": -1}, "cpu"),
        ({"memory": "lots"}, "memory"),
        ({"image": "debian"}, "vivace.Image"),
        ({"readiness_probe": "tcp"}, "Probe"),
        ({"outbound_cidr_allowlist": ["not-a-cidr"]}, "CIDR"),
        ({"encrypted_ports": [0]}, "port"),
        ({"unencrypted_ports": ["80"]}, "port"),
        ({"outbound_cidr_allowlist": "10.0.0.0/8"}, "list"),
        ({"outbound_cidr_allowlist": ["10.0.0.0/8"], "block_network": True}, "exclude"),
    ],
)
def test_bad_create_arguments_are_invalid(app, kwargs, message):
    with pytest.raises(exc.InvalidError, match=message):
        vivace.Sandbox.create(app=app, **kwargs)


def test_more_bad_arguments(app):
    with pytest.raises(exc.InvalidError, match="pty"):
        vivace.Sandbox.create(app=app, pty="yes")
    with pytest.raises(exc.InvalidError, match="app="):
        vivace.Sandbox.create()
    with pytest.raises(exc.InvalidError):
        vivace.Probe.with_tcp(70000)
    with pytest.raises(exc.InvalidError):
        vivace.Sandbox.from_id("not-an-id")


def problem(resp, status, code=None):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    if code:
        assert resp.json()["code"] == code


def test_bad_http_requests_get_4xx(http, app):
    spec = {"name": "s", "module": "m", "qualname": "q", "sandbox": {"command": []}}
    problem(http.post("/v1/sandboxes", json={"app_id": app.app_id}), 422)
    problem(http.post("/v1/sandboxes", json={"app_id": app.app_id, "spec": {**spec, "sandbox": 1}}), 422)
    problem(http.post("/v1/sandboxes", json={"app_id": app.app_id, "spec": {**spec, "cpu": "x"}}), 422)
    problem(http.post("/v1/sandboxes", json={"app_id": app.app_id, "spec": {**spec, "max_inputs": 4}}), 422)
    problem(http.post("/v1/sandboxes", json={"app_id": "ap-nope", "spec": spec}), 404)
    problem(http.get("/v1/sandboxes/sb-doesnotexist"), 404)
    problem(http.get("/v1/sandboxes", params={"tags": "[1]"}), 422)
    problem(http.get("/v1/sandboxes/lookup", params={"app": app.app_id}), 422)
    problem(http.get("/v1/sandboxes/lookup", params={"app": app.app_id, "name": "nobody"}), 404)
    made = http.post("/v1/sandboxes", json={"app_id": app.app_id, "spec": spec}).json()
    sid = made["sandbox_id"]
    problem(http.post(f"/v1/sandboxes/{sid}/exec", json={"argv": []}), 422)
    problem(http.post(f"/v1/sandboxes/{sid}/exec", json={"argv": ["x"], "timeout": -1}), 422)
    problem(http.post(f"/v1/sandboxes/{sid}/exec", json={"argv": ["x"], "discard": ["stdin"]}), 422)
    problem(http.post(f"/v1/sandboxes/{sid}/procs/main/read", json={"stream": "stdin", "offset": 0}), 422)
    problem(http.post(f"/v1/sandboxes/{sid}/procs/main/read", json={"stream": "stdout", "offset": -1}), 422)
    problem(http.post(f"/v1/sandboxes/{sid}/procs/../read", json={"stream": "stdout", "offset": 0}), 404)
    problem(http.post(f"/v1/sandboxes/{sid}/procs/bogus/wait", json={}), 422)
    body = frames.encode({"op": "explode", "path": "/x"})
    problem(http.post(f"/v1/sandboxes/{sid}/fs", content=body), 422)
    body = frames.encode({"op": "read", "path": "relative"})
    problem(http.post(f"/v1/sandboxes/{sid}/fs", content=body), 422)
    problem(http.post(f"/v1/sandboxes/{sid}/fs", content=b"not a frame"), 422)
    problem(http.put(f"/v1/sandboxes/{sid}/tags", json={"tags": {"k": 1}}), 422)
    http.post(f"/v1/sandboxes/{sid}/terminate").raise_for_status()
