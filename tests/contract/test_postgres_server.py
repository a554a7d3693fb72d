"""Contract test for vivace.testing.postgres: a throwaway server starts, serves, and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vivace.testing.postgres import PostgresServer, create_database

# No module-level skip: the ``postgres_available`` fixture (tests/contract/conftest.py) skips when
# PostgreSQL is missing, but fails under CI=true, where a skip would hide that nothing was tested.
pytestmark = pytest.mark.postgres


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        try:
            stat_line = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat_line and int(stat_line[stat_line.rindex(")") + 2 :].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def test_start_query_stop_leaves_nothing_behind(postgres_available: None) -> None:
    import psycopg

    server = PostgresServer()
    with server:
        assert server.dsn.startswith("postgresql://postgres@127.0.0.1:")
        assert server.dsn.endswith("/vivace_test")
        pid = server.pid
        base_dir = server.base_dir
        assert pid is not None and base_dir is not None
        assert _alive(pid) and base_dir.is_dir()
        children = _children(pid)  # checkpointer, walwriter, ... (each its own session leader)
        assert children

        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert conn.execute("select current_database()").fetchone() == ("vivace_test",)
            assert conn.execute("show fsync").fetchone() == ("off",)

        fresh = create_database(server.dsn, "fresh_db")
        with psycopg.connect(fresh) as conn:
            assert conn.execute("select current_database()").fetchone() == ("fresh_db",)
            tables = conn.execute("select count(*) from pg_tables where schemaname = 'public'").fetchone()
            assert tables == (0,)

    assert not base_dir.exists()
    assert not _alive(pid)
    assert not [child for child in children if _alive(child)]
    assert server.pid is None and server.dsn == ""
    server.stop()  # idempotent


def test_stop_without_start_is_a_no_op() -> None:
    server = PostgresServer()
    server.stop()
    server.stop()
