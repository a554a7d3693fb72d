"""As root, a bwrap worker killed with its containers running leaves nothing behind once it restarts
(no container process, cgroup or network namespace), and a worker that stops leaves nothing at all."""

import os
import shutil
import signal
import sys

import pytest

from tests.isolation.conftest import WorkerFootprint, _load, wait_for
from vivace import _sync
from vivace._sdk import connection
from vivace.testing.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def bwrap():
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bwrap must be installed (as root) in CI: .ci/install-runtimes.sh")
        pytest.skip("bwrap is not installed (or not root)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_worker_leaves_nothing_after_restart(bwrap, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    fp = WorkerFootprint(home / "worker")
    with LocalCluster(home, runtimes=["bwrap"], pids_limit=64) as cluster:
        old = {k: os.environ.get(k) for k in cluster.client_env()}
        os.environ.update(cluster.client_env())
        _sync.run_sync(connection.reset_client())
        iso = _load("iso")
        try:
            with iso.app.run():
                # two containers at once: one with a network slot, one with its network blocked
                assert iso.identity.remote()["task_id"]
                assert iso.connect_blocked.remote("127.0.0.1", 9) == "ConnectionRefusedError"
                before = wait_for(
                    lambda: (c := fp.container_cgroups()) and len(c) >= 2 and c, "two containers"
                )
                pids = set().union(*before.values())
                assert pids and fp.namespaces()
                cluster.worker.send_signal(signal.SIGKILL)  # no chance to clean up
                cluster.worker.wait()
                wait_for(lambda: not any(_alive(p) for p in pids), "the containers to die with their worker")
                cluster.start_worker()
                wait_for(lambda: not set(before) & set(fp.container_cgroups()), "the old cgroups to go")
                assert iso.identity.remote()["greeting"] == "hello"  # and it runs functions again
        finally:
            _sync.run_sync(connection.reset_client())
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            sys.modules.pop("iso", None)
    # a worker that stops leaves nothing at all
    assert fp.container_cgroups() == {}
    assert fp.worker_cgroup_dirs() == []
    assert fp.namespaces() == []
