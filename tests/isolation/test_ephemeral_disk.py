"""``ephemeral_disk``: a container's writable layer is a filesystem of exactly that size (ext4 here has no
quotas), so a function that fills it gets ENOSPC instead of filling the worker's disk."""

import pytest

from vivace.testing.cluster import LocalCluster

from .conftest import _load, require_runtime, sdk_pointed_at

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def disky(tmp_path_factory):
    require_runtime("crun")
    home = tmp_path_factory.mktemp("disky")
    with LocalCluster(home, runtimes=["crun"], warm_pool=1) as cluster, sdk_pointed_at(cluster):
        module = _load("disky")
        module.cluster = cluster
        yield module


def test_a_function_cannot_write_past_its_ephemeral_disk(disky):
    with disky.app.run():
        seen = disky.small_disk.remote(100)
    assert 50 <= seen["size_mib"] <= 64, seen  # the filesystem's own overhead comes off the top
    assert seen["outcome"] == "No space left on device" and seen["written_mib"] < 64, seen


def test_within_its_size_it_writes_and_without_one_it_is_the_workers_disk(disky):
    with disky.app.run():
        assert disky.small_disk.remote(16)["outcome"] == "ok"
        other = disky.worker_disk.remote(1)
    assert other["outcome"] == "ok" and other["size_mib"] > 1024  # the worker's own filesystem


def test_the_disk_goes_with_its_container(disky):
    from vivace.worker.runtimes.oci import mounted_under

    from .conftest import wait_for

    containers = disky.cluster.home / "worker" / "containers"
    with disky.app.run():
        disky.small_disk.remote(1)
        assert [m for m in mounted_under(containers) if m.name == "disk"]  # mounted while it runs
    # the app stopped: its containers go, and their filesystems with them
    wait_for(lambda: not [m for m in mounted_under(containers) if m.name == "disk"], "the disks to go")
    assert not list(containers.glob("*/disk.img"))
