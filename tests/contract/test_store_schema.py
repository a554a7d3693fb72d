"""Contract: the one migration tree applies on both stores, once, and the schema enforces its keys."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from vivace.server.services import apps
from vivace.server.store.base import IntegrityError, Store, open_store
from vivace.server.store.migrations import MIGRATIONS, migrate

TABLES = (
    "tokens",
    "apps",
    "functions",
    "calls",
    "inputs",
    "outputs",
    "workers",
    "containers",
    "logs",
    "gpu_claims",
)


def _versions(store: Store) -> list[tuple[Any, ...]]:
    return store.write_sync(
        lambda tx: tx.fetchall("SELECT version, applied_at FROM schema_migrations ORDER BY 1")
    )


def test_migrations_apply_on_empty_db_and_rerunning_start_is_a_no_op(unstarted_store: Store) -> None:
    s = unstarted_store
    s.start()
    versions = _versions(s)
    assert [v for v, _ in versions] == list(range(1, len(MIGRATIONS) + 1))
    for table in TABLES:
        assert s.write_sync(lambda tx, t=table: tx.scalar(f"SELECT COUNT(*) FROM {t}")) == 0
    app_id = s.write_sync(lambda tx: apps.create_app(tx, "kept", "deployed", "test"))["app_id"]
    s.close()

    # the same store object started again, then a second store on the same database
    s.start()
    assert _versions(s) == versions
    s.close()
    again = open_store(s.url)
    try:
        again.start()
        assert _versions(again) == versions  # nothing re-applied: same rows, same applied_at
        assert (
            again.write_sync(lambda tx: tx.scalar("SELECT name FROM apps WHERE id = ?", (app_id,))) == "kept"
        )
    finally:
        again.close()


def test_unique_keys_are_enforced_and_reported_as_integrity_errors(store: Store) -> None:
    def insert_input(tx: Any) -> int:
        return tx.execute(
            "INSERT INTO inputs (call_id, idx, function_id, state, created_at) "
            "VALUES ('fc-x', 0, 'fu-x', 'pending', 0)"
        )

    assert store.write_sync(insert_input) == 1
    with pytest.raises(IntegrityError):
        store.write_sync(insert_input)
    # the failed operation rolled back to its savepoint; the store keeps working
    assert store.write_sync(lambda tx: tx.scalar("SELECT COUNT(*) FROM inputs")) == 1


class _PausingConn:
    """A connection that stops before committing the first migration until released."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.commits = 0
        self.paused = threading.Event()
        self.release = threading.Event()

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.raw.execute(sql, params)

    def commit(self) -> None:
        self.commits += 1
        if self.commits == 2:  # the first is schema_migrations itself, the second is migration 1
            self.paused.set()
            assert self.release.wait(30)
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


def test_a_replica_starting_during_another_replicas_migration_waits_for_it(unstarted_store: Store) -> None:
    first = _PausingConn(unstarted_store._connect())
    errors: list[BaseException] = []

    def run_first() -> None:
        try:
            migrate(first, unstarted_store.dialect)
        except BaseException as exc:
            errors.append(exc)
        finally:
            first.close()

    second = open_store(unstarted_store.url)

    def run_second() -> None:
        try:
            second.start()
        except BaseException as exc:
            errors.append(exc)

    t1 = threading.Thread(target=run_first)
    t1.start()
    try:
        assert first.paused.wait(30)
        t2 = threading.Thread(target=run_second)
        t2.start()
        t2.join(1.0)  # let the second replica reach the point where it waits (or fails)
    finally:
        first.release.set()
        t1.join(30)
    t2.join(30)
    assert not t2.is_alive()
    try:
        assert errors == []
        assert [v for v, _ in _versions(second)] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        second.close()
