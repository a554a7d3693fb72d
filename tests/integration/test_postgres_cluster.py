"""The whole call path on Postgres: the control plane a cluster runs, with a real worker."""

import os

import pytest

from vivace.testing.cluster import LocalCluster
from vivace.testing.postgres import create_database

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


@pytest.fixture
def pg_cluster(pg_server, tmp_path, monkeypatch):
    dsn = create_database(pg_server.dsn, "vivace_cluster")
    with LocalCluster(tmp_path / "home", store_url=dsn, runtimes=["process"]) as cluster:
        for k, v in cluster.client_env().items():
            monkeypatch.setenv(k, v)
        yield cluster


def test_call_path_on_postgres(pg_cluster, app_loader_unbound):
    import vivace._sync
    from vivace._sdk import connection

    vivace._sync.run_sync(connection.reset_client())  # point the SDK at this cluster
    try:
        basic = app_loader_unbound("basic")
        with basic.app.run():
            assert basic.square.remote(9) == 81
            assert list(basic.square.map(range(50))) == [i * i for i in range(50)]
            with pytest.raises(basic.CustomError):
                basic.fail.remote("on postgres")
            assert pg_cluster.plane.store.dialect.name == "postgres"
            assert pg_cluster.plane.notifier.bus is not None  # wake-ups reach other replicas
    finally:
        vivace._sync.run_sync(connection.reset_client())
    assert os.environ["VIVACE_SERVER_URL"] == pg_cluster.url
