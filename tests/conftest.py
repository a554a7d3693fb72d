"""Fixtures shared by every test layer: a throwaway PostgreSQL server (skipped where Postgres is not
installed, except under CI=true, where a missing Postgres fails the run)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

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


def require_postgres() -> None:
    """Skip the test when Postgres is unavailable; fail it instead under CI=true."""
    reason = postgres_missing()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI=true but Postgres tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


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
