"""Metering across a ``kill -9`` of the control plane (ADR 0015): a container that exits while the
control plane is down is billed to its exit, not to when its worker could report it, and nothing is
counted twice or lost. The control plane, the worker and the client are separate processes; the
container's life is checked against the kernel's record of its process."""

from __future__ import annotations

import time

import pytest
from chaos_cluster import Cluster, wait_until
from tests.kernel_clock import process_start, wait_exit

APP_SOURCE = '''\
import os
import sys
import time

import vivace

MARKERS = {markers!r}
app = vivace.App("metered-chaos")


def mark(name, text=""):
    tmp = os.path.join(MARKERS, "." + name)
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(MARKERS, name))


@app.function(scaledown_window=2)
def hold():
    """The first run waits for the test's word, then its container dies; the retry returns at once."""
    if not os.path.exists(os.path.join(MARKERS, "died")):
        mark("up", str(os.getpid()))
        while not os.path.exists(os.path.join(MARKERS, "die")):
            time.sleep(0.01)
        mark("died")
        os._exit(3)
    return os.environ["VIVACE_TASK_ID"]


if __name__ == "__main__":
    with app.run():
        mark("result", hold.remote())
'''


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_container_that_exits_while_the_control_plane_is_down_is_billed_to_its_exit(
    cluster: Cluster,
) -> None:
    cluster.start_server()
    cluster.start_worker()
    markers = cluster.home / "markers"
    markers.mkdir()
    script = cluster.home / "app" / "metered_chaos.py"
    script.parent.mkdir()
    script.write_text(APP_SOURCE.format(markers=str(markers)))
    client = cluster.run_client(script)

    pid = int(wait_until(lambda: (markers / "up").exists() and (markers / "up").read_text(), 60, "the input"))
    first = cluster.container_pids()[pid]
    started = process_start(pid)  # the kernel's record of the container's process
    cluster.kill_server()
    (markers / "die").write_text("")
    exited = wait_exit(pid, 30)
    time.sleep(4.0)  # the worker keeps trying to report the exit
    restarted = time.time()
    cluster.start_server()
    cluster.wait_client(client, 90)
    second = (markers / "result").read_text()
    assert second != first  # the input ran again in a new container

    wait_until(lambda: cluster.scalar("SELECT state FROM containers WHERE id = ?", (first,)) == "stopped",
               30, "the first container to be stopped")  # fmt: skip
    ((start_at, stop_at, reason),) = cluster.query(
        "SELECT started_at, stopped_at, stop_reason FROM containers WHERE id = ?", (first,)
    )
    assert "exit code 3" in reason
    # dated by the worker's report of when it happened, not by when the report could arrive
    assert abs(stop_at - exited) < 1.0 and stop_at < restarted - 3.0, (stop_at, exited, restarted)
    assert abs((stop_at - start_at) - (exited - started)) < 1.0
    with cluster.api() as http:
        rows = http.get("/v1/usage", params={"by": "container", "app": "metered-chaos", "since": 0}).json()[
            "rows"
        ]
    billed = {r["container"]: r["billed_s"] for r in rows}
    assert set(billed) == {first, second}  # each container once
    assert billed[first] == pytest.approx(stop_at - start_at)
