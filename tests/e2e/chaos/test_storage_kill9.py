"""Nothing acknowledged is lost: Dict, Queue and Volume writes survive ``kill -9`` of the control plane.

A client process puts numbered items into a named Queue and a named Dict (and every fourth one as a file
uploaded to a named Volume), recording each one only
after the put returned (acknowledged), while the test kills the server with SIGKILL and starts it
again. Afterwards every acknowledged item is in the Queue and the Dict. A put in flight at the kill may
have been committed before its answer was lost and then retried by the client, so at most the items in
flight may appear twice; none may be missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chaos_cluster import Cluster, wait_until

CLIENT = """\
import io, sys, vivace
n, acked_path = int(sys.argv[1]), sys.argv[2]
q = vivace.Queue.from_name("chaos-q", create_if_missing=True)
d = vivace.Dict.from_name("chaos-d", create_if_missing=True)
v = vivace.Volume.from_name("chaos-v", create_if_missing=True)
with open(acked_path, "a", buffering=1) as acked:
    for i in range(n):
        while True:
            try:
                q.put(i)
                d[i] = i * 2
                if i % 4 == 0:
                    with v.batch_upload(force=True) as batch:
                        batch.put_file(io.BytesIO(b"file %d" % i), f"/files/{i}.txt")
                break
            except vivace.exception.Error as err:  # the server is down for longer than the retries
                print("retrying", i, err, file=sys.stderr, flush=True)
        acked.write(f"{i}\\n")
"""

N = 400


def _acked(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_kill9_of_the_control_plane_loses_no_acknowledged_storage_write(cluster: Cluster) -> None:
    cluster.start_server()
    script, acked = cluster.home / "client.py", cluster.home / "acked.txt"
    script.write_text(CLIENT)
    env = cluster.client_env()
    client = subprocess.Popen(
        [sys.executable, str(script), str(N), str(acked)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(cluster.logs / "client.log", "ab"),  # noqa: SIM115
        start_new_session=True,
    )  # fmt: skip
    cluster.clients.append(client)
    try:
        wait_until(lambda: len(_acked(acked)) >= N // 4, 60, "a quarter of the puts to be acknowledged")
        cluster.kill_server()
        before = len(_acked(acked))
        time.sleep(0.5)  # the client is mid-put, retrying against a dead port
        cluster.start_server()
        wait_until(lambda: client.poll() is not None, 120, "the client to finish its puts")
        assert client.returncode == 0, cluster.log_tail("client")
    finally:
        if client.poll() is None:
            client.kill()
    assert before < N, "every put finished before the kill; the test proved nothing"

    from vivace import _sync
    from vivace._sdk import connection

    os.environ.update({k: v for k, v in cluster.client_env().items() if k.startswith("VIVACE_")})
    try:
        _sync.run_sync(connection.reset_client())
        import vivace

        q, d = vivace.Queue.from_name("chaos-q"), vivace.Dict.from_name("chaos-d")
        got: list[int] = []
        while batch := q.get_many(1000, block=False):
            got.extend(batch)
        entries = dict(d.items())
        vol = vivace.Volume.from_name("chaos-v")
        files = {e.path: b"".join(vol.read_file(e.path)) for e in vol.listdir("/files")}
    finally:
        for k in cluster.client_env():
            if k.startswith("VIVACE_"):
                os.environ.pop(k, None)
        _sync.run_sync(connection.reset_client())
    acknowledged = set(_acked(acked))
    assert acknowledged == set(range(N))
    assert acknowledged <= set(got), sorted(acknowledged - set(got))[:10]
    assert len(got) - len(set(got)) <= 1, "more than the one put in flight at the kill came twice"
    assert entries == {i: i * 2 for i in range(N)}
    assert files == {f"files/{i}.txt": b"file %d" % i for i in range(0, N, 4)}
