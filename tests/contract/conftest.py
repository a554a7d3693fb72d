"""Fixtures for the store contract suite: every test runs once over SQLite and once over Postgres.

Postgres tests carry ``@pytest.mark.postgres``. When the PostgreSQL server binaries (or psycopg) are
missing they are skipped with a reason, except under ``CI=true``, where they fail: CI must never
report a green run that silently tested only SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import in_ci, postgres_missing, require_postgres  # noqa: F401

from vivace.protocol.calls import FINAL, OutputStatus
from vivace.protocol.functions import FunctionSpec
from vivace.server.services import apps, calls, containers, workers
from vivace.server.services.calls import LeasedInput, OutputIn, OutputsResult
from vivace.server.store.base import Store
from vivace.server.store.postgres import PostgresStore
from vivace.server.store.sqlite import SQLiteStore
from vivace.testing.postgres import PostgresServer, create_database


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "sqlite":
        return SQLiteStore(str(tmp_path / "db.sqlite"))
    server: PostgresServer = request.getfixturevalue("pg_server")
    dsn = create_database(server.dsn, f"t_{uuid.uuid4().hex[:16]}")
    return PostgresStore(dsn)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def unstarted_store(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on an empty database, not started (close() is a no-op if it never was)."""
    s = _open(store_kind, request, tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def store(unstarted_store: Store) -> Store:
    unstarted_store.start()
    return unstarted_store


# -- a small harness that drives the services through store.write_sync -----------------------------


class Harness:
    """Builds apps, functions, calls and containers so that each test states only what it checks."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._worker: str | None = None

    def w(self, op: Any) -> Any:
        return self.store.write_sync(op)

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.w(lambda tx: tx.fetchall(query, params))

    def one(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        return self.w(lambda tx: tx.scalar(query, params))

    def function(self, name: str = "f", **spec: Any) -> str:
        app_id = self.w(lambda tx: apps.create_app(tx, None, "ephemeral", "test"))["app_id"]
        fspec = FunctionSpec(name=name, module="tests.mod", qualname=name, **spec)
        fid, stale = self.w(lambda tx: apps.register_function(tx, app_id, fspec, b"definition"))
        assert stale == []
        return str(fid)

    def call(self, function_id: str, n: int = 0, call_id: str | None = None) -> str:
        cid = call_id or f"fc-{uuid.uuid4().hex[:20]}"
        assert self.w(lambda tx: calls.create_call(tx, cid, function_id, "map")) is True
        if n:
            self.put(cid, range(n))
        return cid

    def put(self, call_id: str, idxs: Any, total: int | None = None) -> int:
        items = [(i, f"args-{i}".encode(), None) for i in idxs]
        _, added = self.w(lambda tx: calls.put_inputs(tx, call_id, items, total))
        return int(added)

    def worker(self) -> str:
        if self._worker is None:
            self._worker = self.w(
                lambda tx: workers.register(tx, "w1", 64.0, 256 * 1024, {}, ["process"], "test")
            )
        return self._worker

    def containers(self, n: int | None = None) -> list[tuple[str, str]]:
        """Run the autoscaler and the scheduler; return the new (container id, lease token) pairs."""
        self.worker()
        created = self.w(containers.autoscale).created
        placed = self.w(containers.schedule)
        assert set(placed) == set(created)
        if n is not None:
            assert len(created) == n, created
        return [(c, self.token(c)) for c in created]

    def token(self, container_id: str) -> str:
        return str(self.one("SELECT lease_token FROM containers WHERE id = ?", (container_id,)))

    def lease(self, ct: tuple[str, str], n: int = 1) -> list[LeasedInput]:
        return self.w(lambda tx: calls.lease_inputs(tx, ct[0], ct[1], n))  # type: ignore[no-any-return]

    def output(
        self,
        ct: tuple[str, str],
        seq: int,
        status: OutputStatus = OutputStatus.SUCCESS,
        data: bytes | None = b"result",
        part: int = FINAL,
    ) -> OutputsResult:
        out = OutputIn(
            seq, part, status.value, data, None, None if status == OutputStatus.SUCCESS else "err", 0.1
        )
        return self.w(lambda tx: calls.put_outputs(tx, ct[0], ct[1], [out]))  # type: ignore[no-any-return]

    def stop(self, container_id: str, reason: str = "test") -> set[str]:
        self.w(lambda tx: containers.request_stop(tx, container_id, reason))
        return self.w(lambda tx: containers.mark_stopped(tx, container_id, 0, reason))  # type: ignore[no-any-return]

    def counters(self, function_id: str) -> tuple[int, int]:
        row = self.sql("SELECT backlog, running FROM functions WHERE id = ?", (function_id,))[0]
        return int(row[0]), int(row[1])

    def pending_count(self, function_id: str) -> int:
        return int(
            self.one(
                "SELECT COUNT(*) FROM inputs WHERE function_id = ? AND state = 'pending'", (function_id,)
            )
        )

    def input_row(self, seq: int) -> dict[str, Any]:
        keys = ("state", "attempt", "sys_failures", "not_before", "container_id", "lease_token", "deadline")
        row = self.sql(f"SELECT {', '.join(keys)} FROM inputs WHERE seq = ?", (seq,))[0]
        return dict(zip(keys, row, strict=True))

    def outputs(self, call_id: str) -> list[tuple[Any, ...]]:
        return self.sql(
            "SELECT idx, part, status, data FROM outputs WHERE call_id = ? ORDER BY id", (call_id,)
        )


@pytest.fixture
def h(store: Store) -> Harness:
    return Harness(store)
