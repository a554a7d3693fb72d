"""GPUs over the HTTP API: a fake worker registers GPUs, polls, and gets distinct indices per container.

No GPU is needed: the worker here is this test, speaking the worker API with a worker token, on a
control plane of its own (no real worker, so nothing else can take the containers).
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from vivace._version import __version__
from vivace.protocol import frames
from vivace.testing.cluster import LocalCluster

pytestmark = pytest.mark.timeout(90)


class _PlaneOnly(LocalCluster):
    def start_worker(self) -> None:  # the test is the worker
        pass


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with _PlaneOnly(tmp_path_factory.mktemp("gpus"), tick=0.2) as c:
        yield c


def client(cluster, token):
    headers = {"authorization": f"Bearer {token}", "x-vivace-version": __version__}
    return httpx.Client(base_url=cluster.url, headers=headers, timeout=30)


def gpu(index, model="H100"):
    return {"index": index, "uuid": f"GPU-{uuid.uuid4()}", "type": model, "memory_mib": 81559}


def poll(worker, wid, held=(), wait=0.0):
    resp = worker.post(f"/v1/workers/{wid}/poll", json={"held": list(held), "wait": wait})
    assert resp.status_code == 200, resp.text
    header, _ = frames.decode(resp.content)
    return header


def wait_for_starts(worker, wid, held, n, timeout=20.0):
    starts, deadline = [], time.monotonic() + timeout
    while len(starts) < n and time.monotonic() < deadline:
        starts += poll(worker, wid, held + [s["container_id"] for s in starts], wait=2.0)["start"]
    return starts


def new_function(user, name, gpu_choices, **spec):
    app_id = user.post("/v1/apps", json={"name": name}).json()["app_id"]
    body = {"name": "f", "module": "m", "qualname": "f", "gpu": gpu_choices, **spec}
    resp = user.post(f"/v1/apps/{app_id}/functions", content=frames.encode({"spec": body}))
    assert resp.status_code == 200, resp.text
    return app_id, resp.json()["function_id"]


def call(user, function_id, n):
    call_id = f"fc-{uuid.uuid4().hex[:20]}"
    assert user.post("/v1/calls", json={"call_id": call_id, "function_id": function_id}).status_code == 200
    body = frames.encode({"idx": list(range(n)), "total": n}, [b"x"] * n)
    assert user.post(f"/v1/calls/{call_id}/inputs", content=body).status_code == 200
    return call_id


@pytest.mark.parametrize(
    "gpus",
    [
        "H100",
        [gpu(0), gpu(0)],  # the same index twice
        [{"index": -1, "type": "H100"}],
        [{"index": True, "type": "H100"}],
        [{"index": 0}],
        [{"index": 0, "type": "RTX 4090"}],
        [{"index": 0, "type": "H100", "memory_mib": -5}],
        ["H100"],
    ],
)
def test_bad_gpu_registrations_are_refused_with_a_typed_error(plane, gpus):
    with client(plane, plane.worker_token) as worker:
        resp = worker.post("/v1/workers", json={"name": "bad", "cpu": 1, "memory": 1024, "gpus": gpus})
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == "invalid" and "gpus" in resp.json()["detail"]


def test_gpu_containers_get_distinct_indices_and_the_one_beyond_capacity_waits(plane):
    with client(plane, plane.worker_token) as worker, client(plane, plane.user_token) as user:
        gpus = [gpu(3), gpu(1), gpu(0, "l4"), gpu(2)]
        reg = {"name": "fake-gpu", "cpu": 8, "memory": 32768, "runtimes": ["process"], "gpus": gpus}
        wid = worker.post("/v1/workers", json=reg).json()["worker_id"]
        listed = {w["worker_id"]: w for w in user.get("/v1/workers").json()["workers"]}
        assert [(g["index"], g["type"]) for g in listed[wid]["gpus"]] == [
            (0, "L4"),
            (1, "H100"),
            (2, "H100"),
            (3, "H100"),
        ]

        app_id, fid = new_function(user, "gpus", [{"type": "H100", "count": 2}], max_containers=3)
        call(user, fid, 3)
        (first,) = wait_for_starts(worker, wid, [], 1)
        assert sorted(first["gpus"]) == [1, 2] and first["spec"]["gpu"] == [{"type": "H100", "count": 2}]

        # a second container fits by cpu and memory, but only one H100 is left: it waits
        held = [first["container_id"]]
        assert poll(worker, wid, held, wait=1.5)["start"] == []
        live = user.get("/v1/containers", params={"app": app_id}).json()["containers"]
        assert sorted(c["state"] for c in live) == ["assigned", "pending", "pending"]

        # a function wanting one GPU of any model still fits next to it, on the free ones
        _, fid_any = new_function(user, "any-gpu", [{"type": None, "count": 1}])
        call(user, fid_any, 1)
        (other,) = wait_for_starts(worker, wid, held, 1)
        assert len(other["gpus"]) == 1 and other["gpus"][0] in (0, 3)
        held.append(other["container_id"])

        # the first container exits: its GPUs go to the next one
        events = {"events": [{"container_id": first["container_id"], "event": "exited", "exit_code": 0}]}
        assert worker.post(f"/v1/workers/{wid}/events", json=events).status_code == 200
        held.remove(first["container_id"])
        (second,) = wait_for_starts(worker, wid, held, 1)
        assert sorted(second["gpus"]) == [1, 2]
        assert set(second["gpus"]).isdisjoint(other["gpus"])


def test_a_gpu_no_worker_has_fails_the_call_at_once_with_the_reason(plane):
    with client(plane, plane.worker_token) as worker, client(plane, plane.user_token) as user:
        reg = {"name": "l4s", "cpu": 8, "memory": 32768, "gpus": [gpu(0, "L4")]}
        assert worker.post("/v1/workers", json=reg).status_code == 200
        _, fid = new_function(user, "b200", [{"type": "B200", "count": 1}])
        call_id = call(user, fid, 1)
        resp = user.get(f"/v1/calls/{call_id}/outputs", params={"wait": 20})
        header, _ = frames.decode(resp.content)
        (out,) = header["outputs"]
        assert out["status"] != "success"
        assert "ResourceExhaustedError" in out["error"] and "needs GPU B200:1" in out["error"]
