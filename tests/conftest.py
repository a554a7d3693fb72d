"""Fixtures shared by every test layer: a throwaway PostgreSQL server (skipped where Postgres is not
installed, except under CI=true, where a missing Postgres fails the run)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import pytest

from vivace.testing.postgres import PostgresServer, find_postgres_bin


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def postgres_missing() -> str | None:
    """Why Postgres tests cannot run here, or None when they can."""
    if find_postgres_bin() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql, or .ci/install-postgres.sh)"
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install 'vivace[server]')"
    return None


def require(reason: str | None, what: str) -> None:
    """Skip the test when ``reason`` says something it needs is missing; fail it instead under CI=true,
    where a quiet skip would report a green run that did not test ``what``."""
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI=true but {what} cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require_postgres() -> None:
    """Skip the test when Postgres is unavailable; fail it instead under CI=true."""
    require(postgres_missing(), "Postgres tests")


@contextlib.contextmanager
def sdk_pointed_at(cluster: Any) -> Iterator[None]:
    """Point the SDK at ``cluster`` (a ``LocalCluster``) for the block; restore the environment after."""
    from vivace import _sync
    from vivace._sdk import connection

    old = {k: os.environ.get(k) for k in cluster.client_env()}
    os.environ.update(cluster.client_env())
    _sync.run_sync(connection.reset_client())
    try:
        yield
    finally:
        _sync.run_sync(connection.reset_client())
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def postgres_available() -> None:
    require_postgres()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session (each test gets its own database)."""
    require_postgres()
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
