"""A worker killed with its containers running (warm ones included) leaves nothing behind once it
restarts, and a worker that stops leaves nothing at all: no container process, cgroup, mount, OCI
state, network namespace, veth or iptables chain of its own."""

import signal

import pytest

from tests.isolation.conftest import WorkerFootprint, alive, require_runtime, wait_for
from vivace.testing.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def crun():
    require_runtime("crun")


def test_worker_crash_and_stop_leave_nothing_behind(crun, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    fp = WorkerFootprint(home / "worker")
    with LocalCluster(home, runtimes=["crun"], warm_pool=2) as cluster:
        before = wait_for(
            lambda: (c := fp.container_cgroups()) and len([n for n, p in c.items() if p]) >= 2 and c,
            "two warm containers",
        )
        old_pids = set().union(*before.values())
        old_mounts = [m for m in fp.mounts() if ".idmap-" not in m.name]  # the idmapped base is per worker
        assert all(n.startswith("warm-") for n in before), before
        assert len(old_mounts) >= 2, old_mounts
        assert fp.namespaces() and fp.links() and fp.chains() and fp.state()

        cluster.worker.send_signal(signal.SIGKILL)  # no chance to clean up
        cluster.worker.wait()
        cluster.start_worker()
        # the restarted worker reconciles, then builds a new pool of its own
        wait_for(lambda: not any(alive(p) for p in old_pids), "the old containers' processes to be gone")
        wait_for(
            lambda: {n for n, p in fp.container_cgroups().items() if p and n not in before},
            "a new warm container",
        )
        assert not set(before) & set(fp.container_cgroups()), "old container cgroups survived the restart"
        assert not set(old_mounts) & set(fp.mounts()), "old container mounts survived the restart"
    # a worker that stops leaves nothing at all
    assert fp.container_cgroups() == {}
    assert fp.worker_cgroup_dirs() == []
    assert fp.mounts() == []
    assert fp.namespaces() == []
    assert fp.links() == []
    assert fp.chains() == []
    assert fp.state() == []
