"""Nothing lost, nothing doubled: a 500-input map survives ``kill -9`` of each process.

Each test runs the control plane, a worker and a client as separate processes (see chaos_cluster.py),
kills one of them with SIGKILL in the middle of a map, and checks that

- the client gets exactly ``[i * 2 for i in range(500)]``, in order;
- every input ran at least once, and re-runs are bounded by what could have been leased when the
  process died (each execution appends a line to a file with ``O_APPEND``);
- once the app has stopped, the database holds every input of the call as ``done``, none
  ``leased``, and exactly one final output per input.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from chaos_cluster import Cluster, wait_until

N = 500
MAX_CONTAINERS = 4
LEASE_BATCH = 64  # the most inputs one exchange can lease to a container (server/api/calls.py)
CLIENT_TIMEOUT = 120.0

APP_SOURCE = '''\
"""The chaos app: the function records every execution, then returns i * 2.

The first execution of an input in HOLD announces itself (marker holding-<i>, holding its pid) and
hangs, so a test can kill its process while it is certainly mid-input.
"""

import json
import os
import sys
import time

import vivace

EXEC_LOG = {exec_log!r}
MARKERS = {markers!r}
N = {n}
HOLD = {hold!r}

app = vivace.App("chaos")


@app.function(max_containers={max_containers})
def f(i):
    fd = os.open(EXEC_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, ("%d %d %s\\n" % (i, os.getpid(), os.environ.get("VIVACE_TASK_ID", ""))).encode())
    finally:
        os.close(fd)
    if i in HOLD and not os.path.exists(os.path.join(MARKERS, "holding-%d" % i)):
        mark("holding-%d" % i, str(os.getpid()))
        time.sleep(60)
    time.sleep(0.02)
    return i * 2


def mark(name, text=""):
    tmp = os.path.join(MARKERS, "." + name)
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(MARKERS, name))


def wait_for(name, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(MARKERS, name)):
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for marker " + name)
        time.sleep(0.02)


def slow_indices(n, every, pause):
    for i in range(n):
        if i and i % every == 0:
            mark("generated-%d" % i)
            time.sleep(pause)
        yield i


def main(mode, out_path):
    started = time.monotonic()
    with app.run():
        if mode == "map":
            results = list(f.map(range(N)))
        elif mode == "slow_upload":
            from vivace._sdk import invocation

            # several upload requests for 500 inputs (the SDK sends up to 1000 per request), spread out
            assert hasattr(invocation, "BATCH_INPUTS")
            invocation.BATCH_INPUTS = 50
            results = list(f.map(slow_indices(N, 50, 0.25)))
        elif mode == "spawn_map":
            call = f.spawn_map(range(N))
            mark("call_id", call.object_id)
            wait_for("go")
            results = vivace.FunctionCall.from_id(call.object_id).get(timeout=90)
        else:
            raise SystemExit("unknown mode " + mode)
        mark("results_received")
    with open(out_path + ".tmp", "w") as fh:
        json.dump({{"results": results, "seconds": time.monotonic() - started}}, fh)
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
'''


class ChaosApp:
    """The app's module file (a real file: containers import it by name) and what it leaves behind."""

    def __init__(self, cluster: Cluster, *, hold: tuple[int, ...] = (), padding: int = 0) -> None:
        self.dir = cluster.home / "app"
        self.markers = cluster.home / "markers"
        self.dir.mkdir()
        self.markers.mkdir()
        self.exec_log = cluster.home / "executions.log"
        self.out = cluster.home / "result.json"
        self.script = self.dir / "chaos_app.py"
        source = APP_SOURCE.format(
            exec_log=str(self.exec_log),
            markers=str(self.markers),
            n=N,
            hold=hold,
            max_containers=MAX_CONTAINERS,
        )
        if padding:  # a bigger source package takes the worker longer to fetch and unpack
            source += f"\n\nPADDING = {base64.b64encode(os.urandom(padding)).decode()!r}\n"
        self.script.write_text(source)
        self.cluster = cluster

    def start(self, mode: str) -> Any:
        return self.cluster.run_client(self.script, mode, str(self.out))

    def marker(self, name: str) -> str | None:
        p = self.markers / name
        return p.read_text() if p.exists() else None

    def set_marker(self, name: str) -> None:
        (self.markers / name).write_text("")

    def executions(self) -> list[tuple[int, int, str]]:
        """(input, pid, container id) per execution, in the order they started."""
        if not self.exec_log.exists():
            return []
        out = []
        for line in self.exec_log.read_text().splitlines():
            i, pid, task = line.split(" ")
            out.append((int(i), int(pid), task))
        return out

    def executed(self) -> int:
        if not self.exec_log.exists():
            return 0
        with open(self.exec_log, "rb") as fh:
            return sum(1 for _ in fh)

    def results(self) -> list[Any]:
        import json

        data = json.loads(self.out.read_text())
        return list(data["results"])


def assert_exactly_once(app: ChaosApp, max_extra: int) -> Counter[int]:
    """The client saw every result, in order; every input ran at least once and re-runs are bounded."""
    c = app.cluster
    results = app.results()
    assert results == [i * 2 for i in range(N)], "results differ from [i * 2 for i in range(500)]"
    runs = Counter(i for i, _, _ in app.executions())
    assert set(runs) == set(range(N)), f"inputs never executed: {sorted(set(range(N)) - set(runs))[:20]}"
    total = sum(runs.values())
    assert N <= total <= N + max_extra, f"{total} executions for {N} inputs (allowed at most {N + max_extra})"

    # the control plane's view, once the app has stopped
    assert c.query("SELECT state FROM apps") == [("stopped",)]
    calls = c.query("SELECT id, inputs_total, inputs_added, outputs_done, cancelled FROM calls")
    assert len(calls) == 1, calls
    call_id, inputs_total, inputs_added, outputs_done, cancelled = calls[0]
    assert (inputs_total, inputs_added, outputs_done, cancelled) == (N, N, N, 0)
    assert c.scalar("SELECT COUNT(*) FROM inputs WHERE state = 'leased'") == 0
    by_state = dict(
        c.query("SELECT state, COUNT(*) FROM inputs WHERE call_id = ? GROUP BY state", (call_id,))
    )
    assert by_state == {"done": N}, by_state
    idxs = c.query("SELECT MIN(idx), MAX(idx), COUNT(DISTINCT idx) FROM inputs WHERE call_id = ?", (call_id,))
    assert idxs == [(0, N - 1, N)]
    finals = c.query(
        "SELECT status, COUNT(*), COUNT(DISTINCT idx) FROM outputs "
        "WHERE call_id = ? AND part = -1 GROUP BY status",
        (call_id,),
    )
    assert finals == [("success", N, N)], finals
    # the stopped app's containers all stop, and their processes exit
    wait_until(
        lambda: c.scalar("SELECT COUNT(*) FROM containers WHERE state <> 'stopped'") == 0,
        30,
        "every container of the stopped app to stop",
    )
    wait_until(lambda: not c.container_pids(), 15, "container processes to exit")
    return runs


def held_by(cluster: Cluster, app: ChaosApp, i: int) -> tuple[int, str]:
    """Wait until a container process hangs inside input ``i``; returns (pid, container id)."""
    pid = int(wait_until(lambda: app.marker(f"holding-{i}"), 60, f"a container to start input {i}"))
    task = cluster.container_pids().get(pid)
    assert task is not None, f"pid {pid} running input {i} is not a container process of this cluster"
    return pid, task


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill9_container_mid_input(cluster: Cluster) -> None:
    hold = (100, 250)
    cluster.start_server()
    cluster.start_worker()
    app = ChaosApp(cluster, hold=hold)
    started = time.monotonic()
    client = app.start("map")
    killed: dict[int, str] = {}
    for i in hold:
        pid, task = held_by(cluster, app, i)
        os.kill(pid, signal.SIGKILL)  # mid-input: it hangs inside input i
        killed[i] = task
        wait_until(lambda p=pid: p not in cluster.container_pids(), 10, "the killed container to die")
        assert app.executed() < N, "the map finished before the container was killed; make f slower"
    cluster.wait_client(client, CLIENT_TIMEOUT)
    runs = assert_exactly_once(app, max_extra=LEASE_BATCH * len(killed))
    for i, task in killed.items():
        # the input the container died in ran again elsewhere; the container is recorded as killed
        assert runs[i] == 2, (i, runs[i])
        state, code = cluster.query("SELECT state, exit_code FROM containers WHERE id = ?", (task,))[0]
        assert (state, code) == ("stopped", 137)
        assert {t for j, _, t in app.executions() if j == i} - {task}, f"input {i} never ran elsewhere"
    print(
        f"container kill: {time.monotonic() - started:.1f} s, {sum(runs.values())} executions, "
        f"{sum(1 for v in runs.values() if v > 1)} inputs re-run"
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill9_worker_holding_leases(cluster: Cluster) -> None:
    cluster.start_server()
    first = cluster.start_worker()
    app = ChaosApp(cluster, hold=(150,))
    started = time.monotonic()
    client = app.start("map")
    held_by(cluster, app, 150)
    leased = cluster.query("SELECT idx FROM inputs WHERE state = 'leased'")
    assert (150,) in leased, leased
    doomed = cluster.container_pids()
    cluster.kill_worker()
    # its containers die with it (PDEATHSIG) ...
    wait_until(
        lambda: not (set(doomed) & set(cluster.container_pids())), 10, "the worker's containers to die"
    )
    assert app.executed() < N, "the map finished before the worker was killed; make f slower"
    # ... and the inputs they held stay leased to them until the worker comes back
    time.sleep(0.5)
    held = cluster.query("SELECT idx FROM inputs WHERE state = 'leased'")
    assert (150,) in held, held
    assert app.executed() < N
    second = cluster.start_worker()
    assert second != first
    cluster.wait_client(client, CLIENT_TIMEOUT)
    runs = assert_exactly_once(app, max_extra=LEASE_BATCH * MAX_CONTAINERS)
    assert runs[150] == 2
    assert cluster.query("SELECT state FROM workers WHERE id = ?", (first,)) == [("dead",)]
    print(
        f"worker kill: {time.monotonic() - started:.1f} s, {len(held)} inputs leased at the kill, "
        f"{sum(runs.values())} executions"
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill9_control_plane_during_upload(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    app = ChaosApp(cluster)
    started = time.monotonic()
    client = app.start("slow_upload")
    wait_until(
        lambda: (cluster.scalar("SELECT COUNT(*) FROM inputs") or 0) >= 100,
        60,
        "the first input batches to be persisted",
    )
    cluster.kill_server()
    # the upload was cut in the middle: some inputs persisted, the total not yet known
    persisted = cluster.scalar("SELECT COUNT(*) FROM inputs")
    assert 0 < persisted < N
    assert cluster.scalar("SELECT inputs_total FROM calls") is None
    time.sleep(1.0)  # uploads, leases and outputs now fail and are retried
    cluster.start_server()
    cluster.wait_client(client, CLIENT_TIMEOUT)
    runs = assert_exactly_once(app, max_extra=LEASE_BATCH * MAX_CONTAINERS)
    print(
        f"control plane kill during upload: {time.monotonic() - started:.1f} s, "
        f"{persisted} inputs persisted at the kill, {sum(runs.values())} executions"
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill9_control_plane_after_inputs_persisted_before_any_lease(cluster: Cluster) -> None:
    cluster.start_server()  # no worker yet: nothing can be leased
    app = ChaosApp(cluster)
    started = time.monotonic()
    client = app.start("map")
    wait_until(
        lambda: cluster.query("SELECT inputs_total, inputs_added FROM calls") == [(N, N)],
        60,
        "every input to be persisted",
    )
    assert cluster.scalar("SELECT COUNT(*) FROM inputs WHERE state = 'pending'") == N
    cluster.kill_server()
    assert cluster.scalar("SELECT COUNT(*) FROM inputs WHERE state = 'pending'") == N
    assert app.executed() == 0
    cluster.start_server()
    cluster.start_worker()
    cluster.wait_client(client, CLIENT_TIMEOUT)
    runs = assert_exactly_once(app, max_extra=0)
    print(
        f"control plane kill before any lease: {time.monotonic() - started:.1f} s, "
        f"{sum(runs.values())} executions"
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill9_control_plane_after_outputs_persisted_before_fetch(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    app = ChaosApp(cluster)
    started = time.monotonic()
    client = app.start("spawn_map")
    call_id = wait_until(lambda: app.marker("call_id"), 60, "the spawned map's call id")
    wait_until(
        lambda: cluster.query("SELECT outputs_done FROM calls WHERE id = ?", (call_id,)) == [(N,)],
        90,
        "every output to be persisted",
    )
    assert app.marker("results_received") is None
    cluster.kill_server()
    assert cluster.scalar("SELECT COUNT(*) FROM outputs WHERE call_id = ? AND part = -1", (call_id,)) == N
    cluster.start_server()
    app.set_marker("go")  # now the client fetches: FunctionCall.from_id(call_id).get()
    cluster.wait_client(client, CLIENT_TIMEOUT)
    runs = assert_exactly_once(app, max_extra=0)
    print(
        f"control plane kill before fetch: {time.monotonic() - started:.1f} s, "
        f"{sum(runs.values())} executions"
    )


# -- the lease fence at the HTTP level ----------------------------------------------------------------


def _frames(header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    from vivace.protocol import frames

    return frames.encode(header, blobs)


def _decode(body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    from vivace.protocol import frames

    return frames.decode(body)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_output_under_revoked_lease_is_rejected(cluster: Cluster) -> None:
    """A worker that restarted (so its containers' leases were revoked) cannot hand in an output."""
    from vivace.protocol import ids
    from vivace.protocol.functions import FunctionSpec

    cluster.start_server()  # no real worker: this test plays the worker over HTTP
    user = cluster.api()
    worker = cluster.api()
    worker.headers["authorization"] = (
        f"Bearer {cluster.creds['worker_token_id']}:{cluster.creds['worker_token_secret']}"
    )
    frames_ct = {"content-type": "application/vnd.vivace.frames"}

    def register(replaces: str | None) -> str:
        body = {
            "name": "fake",
            "cpu": 2,
            "memory": 4096,
            "runtimes": ["process"],
            "labels": {},
            "replaces": replaces,
        }
        r = worker.post("/v1/workers", json=body)
        assert r.status_code == 200, r.text
        return str(r.json()["worker_id"])

    def poll_start(wid: str) -> tuple[str, str]:
        def once() -> tuple[str, str] | None:
            r = worker.post(f"/v1/workers/{wid}/poll", json={"held": [], "wait": 2})
            assert r.status_code == 200, r.text
            starts = _decode(r.content)[0]["start"]
            return (starts[0]["container_id"], starts[0]["lease_token"]) if starts else None

        return wait_until(once, 20, "a container assignment", interval=0.0)

    def exchange(
        wid: str, cid: str, token: str, outputs: list[dict[str, Any]], blobs: list[bytes], want: int
    ) -> Any:
        body = _frames({"token": token, "outputs": outputs, "want": want, "wait": 5 if want else 0}, blobs)
        return worker.post(f"/v1/workers/{wid}/containers/{cid}/exchange", content=body, headers=frames_ct)

    def outputs(call_id: str) -> list[tuple[Any, ...]]:
        return cluster.query("SELECT idx, part, status, data FROM outputs WHERE call_id = ?", (call_id,))

    wid1 = register(None)
    r = user.post("/v1/apps", json={"name": "fence", "state": "ephemeral"})
    assert r.status_code == 200, r.text
    app_id = r.json()["app_id"]
    spec = FunctionSpec(name="g", module="fence_mod", qualname="g", max_containers=1).to_dict()
    r = user.post(f"/v1/apps/{app_id}/functions", content=_frames({"spec": spec}), headers=frames_ct)
    assert r.status_code == 200, r.text
    fid = r.json()["function_id"]
    call_id = ids.new_id(ids.FUNCTION_CALL)
    r = user.post(
        f"/v1/calls/{call_id}/inputs",
        headers=frames_ct,
        content=_frames({"idx": [0], "total": 1, "function_id": fid, "kind": "map"}, [b"args"]),
    )
    assert r.status_code == 200 and r.json() == {"added": 1}, r.text

    # the first container leases the input
    cid1, tok1 = poll_start(wid1)
    r = exchange(wid1, cid1, tok1, [], [], want=1)
    assert r.status_code == 200, r.text
    leased = _decode(r.content)[0]["inputs"]
    assert [(i["call"], i["idx"], i["attempt"]) for i in leased] == [(call_id, 0, 1)]
    seq = leased[0]["seq"]
    assert cluster.query("SELECT state, container_id FROM inputs WHERE seq = ?", (seq,)) == [("leased", cid1)]

    # the worker restarts: its containers stop, their leases are revoked, the input is queued again
    wid2 = register(wid1)
    assert cluster.query("SELECT state FROM containers WHERE id = ?", (cid1,)) == [("stopped",)]
    assert cluster.query("SELECT state, attempt FROM inputs WHERE seq = ?", (seq,)) == [("pending", 2)]

    # an output under the revoked lease is not stored; asking for more work under it is 410 Gone
    stale = [{"seq": seq, "part": -1, "status": "success", "blob": 0, "duration": 0.01}]
    r = exchange(wid1, cid1, tok1, stale, [b"stale"], want=1)
    assert r.status_code == 410, (r.status_code, r.text)
    r = exchange(wid1, cid1, tok1, stale, [b"stale"], want=0)
    assert r.status_code == 410, (r.status_code, r.text)  # the runtime learns at once that it must stop
    assert outputs(call_id) == []
    # a forged token for the right container is rejected the same way
    r = exchange(wid1, cid1, secrets.token_hex(16), stale, [b"forged"], want=1)
    assert r.status_code == 410, (r.status_code, r.text)
    assert outputs(call_id) == []

    # the replacement container leases the input again and its output is the one that counts
    cid2, tok2 = poll_start(wid2)
    assert cid2 != cid1
    r = exchange(wid2, cid2, tok2, [], [], want=1)
    assert r.status_code == 200, r.text
    again = _decode(r.content)[0]["inputs"]
    assert [(i["seq"], i["attempt"]) for i in again] == [(seq, 2)]
    good = [{"seq": seq, "part": -1, "status": "success", "blob": 0, "duration": 0.01}]
    r = exchange(wid2, cid2, tok2, good, [b"good"], want=0)
    assert r.status_code == 200, r.text
    assert _decode(r.content)[0]["rejected"] == 0
    # the stale output arriving late still cannot replace or double it
    r = exchange(wid1, cid1, tok1, stale, [b"stale"], want=0)
    assert r.status_code in (200, 410), (r.status_code, r.text)
    # and the new container's own token cannot hand in a second final output for the same input
    r = exchange(wid2, cid2, tok2, good, [b"twice"], want=0)
    assert r.status_code == 200 and _decode(r.content)[0]["rejected"] == 1, r.text
    assert [(o[0], o[1], o[2], bytes(o[3])) for o in outputs(call_id)] == [(0, -1, "success", b"good")]
    assert cluster.query("SELECT state FROM inputs WHERE seq = ?", (seq,)) == [("done",)]
    page = user.get(f"/v1/calls/{call_id}/outputs", params={"cursor": 0})
    assert page.status_code == 200
    header, blobs = _decode(page.content)
    assert [(o["idx"], o["status"]) for o in header["outputs"]] == [(0, "success")]
    assert blobs == [b"good"]
    user.close()
    worker.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_each_container_runs_as_one_process(cluster: Cluster) -> None:
    """Each container id is exactly one process, and a function never has more than max_containers.

    Regression test for a worker start race (fixed in 3e31730): a container the worker was still
    starting (fetching its source) was not in the poll's ``held`` list, so every poll in that window
    got the same ``start`` again and the worker ran 3-6 processes under one container id. A big
    source package widens that window.
    """
    cluster.start_server()
    cluster.start_worker()
    app = ChaosApp(cluster, padding=3 * 1024 * 1024)
    client = app.start("map")
    per_container: Counter[str] = Counter()
    most = 0
    while client.poll() is None:
        live = cluster.container_pids()
        most = max(most, len(live))
        for task, n in Counter(live.values()).items():
            per_container[task] = max(per_container[task], n)
        time.sleep(0.02)
    cluster.wait_client(client, CLIENT_TIMEOUT)
    assert app.results() == [i * 2 for i in range(N)]
    assert per_container, "no container process was seen"
    doubled = {t: n for t, n in per_container.items() if n > 1}
    assert not doubled, f"several processes ran as one container: {doubled}"
    assert most <= MAX_CONTAINERS, f"{most} container processes at once for max_containers={MAX_CONTAINERS}"
