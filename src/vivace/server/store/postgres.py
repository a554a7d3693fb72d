"""Postgres store (clusters): the same operations, through psycopg 3 with the default durability."""

from __future__ import annotations

import re
from typing import Any

from vivace.server.store.base import DbConnection, Dialect, Store

_PLACEHOLDER = re.compile(r"\?")


class PostgresDialect(Dialect):
    name = "postgres"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    types = {
        "BLOB": "BYTEA",
        "DOUBLE": "DOUBLE PRECISION",
        "SERIAL": "BIGSERIAL PRIMARY KEY",
        "BIGINT": "BIGINT",
    }

    def sql(self, text: str) -> str:
        return _PLACEHOLDER.sub("%s", text)

    def is_integrity_error(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.IntegrityError)


class _Conn:
    """Adapts a psycopg connection to the small DB-API surface the engine uses."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any = ()) -> Any:
        cur = self.raw.cursor()
        cur.execute(sql, params or None)
        return cur

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


class PostgresStore(Store):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.dialect = PostgresDialect()

    def _connect(self) -> DbConnection:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "Postgres support needs the server extra: pip install 'vivace[server]'"
            ) from exc
        return _Conn(psycopg.connect(self.url, autocommit=False))

    def _begin(self, conn: DbConnection) -> None:
        pass  # psycopg opens a transaction on the first statement

    def _now(self, conn: DbConnection) -> float:
        cur = conn.execute("SELECT extract(epoch from clock_timestamp())")
        return float(cur.fetchone()[0])
