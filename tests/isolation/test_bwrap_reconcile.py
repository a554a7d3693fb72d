"""As root, a bwrap worker killed with its containers running leaves nothing behind once it restarts
(no container process, cgroup or network namespace), and a worker that stops leaves nothing at all."""

import signal
import sys

import pytest

from tests.isolation.conftest import WorkerFootprint, _load, alive, require_runtime, sdk_pointed_at, wait_for
from vivace.testing.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def bwrap():
    require_runtime("bwrap")


def test_killed_worker_leaves_nothing_after_restart(bwrap, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    fp = WorkerFootprint(home / "worker")
    with LocalCluster(home, runtimes=["bwrap"], pids_limit=64) as cluster, sdk_pointed_at(cluster):
        iso = _load("iso")
        with iso.app.run():
            # two containers at once: one with a network slot, one with its network blocked
            assert iso.identity.remote()["task_id"]
            assert iso.connect_blocked.remote("127.0.0.1", 9) == "ConnectionRefusedError"
            before = wait_for(lambda: (c := fp.container_cgroups()) and len(c) >= 2 and c, "two containers")
            pids = set().union(*before.values())
            assert pids and fp.namespaces()
            cluster.worker.send_signal(signal.SIGKILL)  # no chance to clean up
            cluster.worker.wait()
            wait_for(lambda: not any(alive(p) for p in pids), "the containers to die with their worker")
            cluster.start_worker()
            wait_for(lambda: not set(before) & set(fp.container_cgroups()), "the old cgroups to go")
            assert iso.identity.remote()["greeting"] == "hello"  # and it runs functions again
        sys.modules.pop("iso", None)
    # a worker that stops leaves nothing at all
    assert fp.container_cgroups() == {}
    assert fp.worker_cgroup_dirs() == []
    assert fp.namespaces() == []
