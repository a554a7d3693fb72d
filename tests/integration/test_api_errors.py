"""Bad input at the HTTP edge gets a typed problem+json answer: 401/403/404/422, never a 500."""

import httpx
import pytest

from vivace._version import __version__
from vivace.protocol import frames

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def http(cluster):
    headers = {"authorization": f"Bearer {cluster.user_token}", "x-vivace-version": __version__}
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=10) as c:
        yield c


def problem(resp, status, code=None):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["detail"]
    if code:
        assert body["code"] == code


def test_authentication(cluster):
    with httpx.Client(base_url=cluster.url, headers={"x-vivace-version": __version__}) as c:
        problem(c.get("/v1/apps"), 401)
        problem(c.get("/v1/apps", headers={"authorization": "Bearer nope"}), 401)
        problem(c.get("/v1/apps", headers={"authorization": "Bearer tk-abcd:wrong"}), 401)
        worker = {"authorization": f"Bearer {cluster.worker_token}"}
        problem(c.get("/v1/apps", headers=worker), 403)
        user = {"authorization": f"Bearer {cluster.user_token}"}
        problem(c.post("/v1/workers", json={"name": "x", "cpu": 1, "memory": 1}, headers=user), 403)


def test_version_mismatch(cluster):
    headers = {"authorization": f"Bearer {cluster.user_token}", "x-vivace-version": "99.0.0"}
    problem(httpx.get(f"{cluster.url}/v1/apps", headers=headers), 426, "version_mismatch")


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/v1/apps", {"content": b"{not json"}, 422),
        ("POST", "/v1/apps", {"json": [1, 2]}, 422),
        ("POST", "/v1/apps", {"json": {"state": "weird"}}, 422),
        ("POST", "/v1/apps", {"json": {"name": "bad name!"}}, 422),
        ("POST", "/v1/calls", {"json": {"call_id": "fc-abcd1234", "function_id": "fu-nope1234"}}, 404),
        ("POST", "/v1/calls", {"json": {"call_id": "x", "function_id": "fu-1"}}, 422),
        ("POST", "/v1/calls/fc-abcd1234/inputs", {"content": b"garbage"}, 422),
        ("POST", "/v1/calls/fc-abcd1234/inputs", {"content": frames.encode({"idx": [0]}, [b"x"])}, 404),
        ("POST", "/v1/calls/fc-abcd1234/inputs", {"content": frames.encode({"idx": [-1]}, [b"x"])}, 422),
        ("GET", "/v1/calls/fc-abcd1234/outputs", {"params": {"wait": "soon"}}, 422),
        ("GET", "/v1/calls/fc-abcd1234/outputs", {}, 404),
        ("GET", "/v1/functions/lookup", {"params": {"app": "nope", "name": "f"}}, 404),
        ("GET", "/v1/functions/lookup", {}, 422),
        ("POST", "/v1/apps/ap-nope1234/functions", {"content": frames.encode({"spec": {"name": 1}})}, 422),
        ("POST", "/v1/containers/ta-nope1234/exec", {"json": {"argv": []}}, 422),
        ("POST", "/v1/containers/ta-nope1234/exec", {"json": {"argv": ["true"]}}, 404),
        ("PUT", "/v1/blobs/" + "0" * 64, {"content": b"x"}, 422),
        ("GET", "/v1/blobs/zz", {}, 422),
        ("GET", "/v1/nope", {}, 404),
        ("GET", "/v1/apps/lookup", {}, 422),
        ("GET", "/v1/apps/lookup", {"params": {"name": "never-deployed"}}, 404),
        ("POST", "/v1/functions/fu-nope1234/variants", {"json": {"options": {}}}, 404),
        ("POST", "/v1/functions/fu-nope1234/variants", {"json": {"options": []}}, 422),
        ("POST", "/v1/functions/fu-nope1234/variants", {"json": {"colour": 1}}, 422),
        ("DELETE", "/v1/apps", {}, 405),
    ],
)
def test_bad_requests(http, method, path, kwargs, status):
    problem(http.request(method, path, **kwargs), status)


def test_function_spec_validation(http):
    app_id = http.post("/v1/apps", json={"name": "errs", "state": "deployed"}).json()["app_id"]
    spec = {"name": "f", "module": "m", "qualname": "f", "min_containers": 3, "max_containers": 1}
    resp = http.post(f"/v1/apps/{app_id}/functions", content=frames.encode({"spec": spec}))
    problem(resp, 422)
    assert "max_containers" in resp.json()["detail"]
    for bad in ({"name": "f#1"}, {"variant_of": "f"}, {"params": {"x": 1}}):  # variants only via /variants
        resp = http.post(
            f"/v1/apps/{app_id}/functions",
            content=frames.encode({"spec": {**spec, "max_containers": None, **bad}}),
        )
        problem(resp, 422)
    ok = {"name": "f", "module": "m", "qualname": "f"}
    fid = http.post(f"/v1/apps/{app_id}/functions", content=frames.encode({"spec": ok})).json()["function_id"]
    for options, word in (
        ({"module": "x"}, "cannot change"),
        ({"cpu": -1}, "cpu"),
        ({"batch_max_size": 2}, "batched"),
    ):
        resp = http.post(f"/v1/functions/{fid}/variants", json={"options": options})
        problem(resp, 422)
        assert word in resp.json()["detail"]
    problem(http.post(f"/v1/functions/{fid}/variants", json={"params": {"x": 1}}), 422)  # not a class
    first = http.post(f"/v1/functions/{fid}/variants", json={"options": {"cpu": 0.5}}).json()
    again = http.post(f"/v1/functions/{fid}/variants", json={"options": {"cpu": 0.5}}).json()
    assert first["function_id"] == again["function_id"] and first["spec"]["cpu"] == 0.5  # idempotent
    assert http.get("/v1/functions/lookup", params={"app": "errs", "name": "f"}).json()["function_id"] == fid
    missing = http.get("/v1/functions/lookup", params={"app": "errs", "name": first["spec"]["name"]})
    problem(missing, 404)  # variants are never found by name
    http.post(f"/v1/apps/{app_id}/stop")


def test_openapi_lists_every_route(http):
    spec = http.get("/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/v1/calls/{call_id}/inputs" in spec["paths"] and "/v1/workers/{worker_id}/poll" in spec["paths"]


def test_a_worker_token_acts_only_for_its_own_workers(cluster, http):
    other = http.post("/v1/tokens", json={"kind": "worker", "label": "other"}).json()
    headers = {
        "authorization": f"Bearer {other['token_id']}:{other['token_secret']}",
        "x-vivace-version": __version__,
    }
    workers = http.get("/v1/workers").json()["workers"]
    victim = workers[0]["worker_id"]
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=10) as c:
        problem(c.post(f"/v1/workers/{victim}/poll", json={"held": [], "wait": 0}), 403)
        problem(c.post(f"/v1/workers/{victim}/events", json={"events": []}), 403)
        problem(c.post("/v1/workers", json={"name": "x", "cpu": 0.01, "memory": 1, "replaces": victim}), 403)
        assert victim in [w["worker_id"] for w in http.get("/v1/workers").json()["workers"]]  # not retired
        mine = c.post("/v1/workers", json={"name": "mine", "cpu": 0.01, "memory": 1}).json()
        assert (
            c.post(f"/v1/workers/{mine['worker_id']}/poll", json={"held": [], "wait": 0}).status_code == 200
        )
        c.post(f"/v1/workers/{mine['worker_id']}/poll", json={"held": [], "wait": 0})
