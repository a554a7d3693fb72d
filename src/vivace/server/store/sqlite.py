"""SQLite store: WAL, ``synchronous=NORMAL``, one writer committing in groups.

With WAL and ``synchronous=NORMAL`` a committed transaction survives ``kill -9`` of any process
(it is in the WAL file, which the OS keeps), though not a power cut; Postgres is for that.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vivace.server.store.base import DbConnection, Dialect, Store


class SQLiteDialect(Dialect):
    name = "sqlite"

    def is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)


class SQLiteStore(Store):
    inline = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.url = f"sqlite:///{path}"
        self.dialect = SQLiteDialect()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> DbConnection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _begin(self, conn: DbConnection) -> None:
        conn.execute("BEGIN IMMEDIATE")
