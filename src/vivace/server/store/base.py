"""The store port and its group-committing engine.

Operations are plain synchronous functions ``op(tx) -> T`` written once in portable SQL (``?``
placeholders). A single writer thread owns a connection, drains every operation that is queued,
runs each in its own savepoint inside one transaction and commits once: many small writes cost one
fsync (group commit). Reads that can run concurrently go to a separate reader connection. Callers
await ``store.write(op)`` / ``store.read(op)`` from the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

log = logging.getLogger("vivace.store")
T = TypeVar("T")
Row = tuple[Any, ...]
_MAX_GROUP = 256


class StoreError(Exception):
    """The store failed (not the caller's fault)."""


class IntegrityError(StoreError):
    """A uniqueness or foreign-key rule was violated."""


class DbConnection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


class Tx:
    """One operation's view of the open transaction."""

    def __init__(self, conn: DbConnection, dialect: Dialect, now: float) -> None:
        self._conn = conn
        self.dialect = dialect
        self.now = now

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = self._conn.execute(self.dialect.sql(sql), params)
        return int(cur.rowcount)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self._conn.execute(self.dialect.sql(sql), params)
        return [tuple(r) for r in cur.fetchall()]

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cur = self._conn.execute(self.dialect.sql(sql), params)
        row = cur.fetchone()
        return None if row is None else tuple(row)

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else row[0]

    def in_list(self, values: Iterable[Any]) -> tuple[str, list[Any]]:
        vals = list(values)
        return "(" + ",".join("?" * len(vals)) + ")", vals


class Dialect:
    """What differs between SQLite and Postgres, kept as small as possible."""

    name = "sqlite"
    skip_locked = ""  # appended to a SELECT that claims rows
    types = {
        "BLOB": "BLOB",
        "DOUBLE": "REAL",
        "SERIAL": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT": "INTEGER",
    }

    def sql(self, text: str) -> str:
        return text

    def ddl(self, text: str) -> str:
        for token, real in self.types.items():
            text = text.replace("{" + token + "}", real)
        return text

    def is_integrity_error(self, exc: BaseException) -> bool:
        return False


class _Job:
    __slots__ = ("future", "op")

    def __init__(self, op: Callable[[Tx], Any]) -> None:
        self.op = op
        self.future: Future[Any] = Future()


class Store:
    """Base engine: subclasses provide ``_connect`` and ``dialect``."""

    dialect: Dialect
    url: str

    # run operations on the event loop's own thread (no GIL hand-offs): right for an embedded database
    # whose statements take microseconds; a networked database keeps its threads
    inline = False

    def __init__(self) -> None:
        self._inline_write: DbConnection | None = None
        self._inline_read: DbConnection | None = None
        self._pending: list[tuple[Callable[[Tx], Any], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._writes: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._started = False
        self.commits = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def _connect(self) -> DbConnection:
        raise NotImplementedError

    def _now(self, conn: DbConnection) -> float:
        return time.time()

    def start(self) -> None:
        from vivace.server.store.migrations import migrate

        conn = self._connect()
        try:
            migrate(conn, self.dialect)
        finally:
            conn.close()
        for name, q, group in (("store-writer", self._writes, True), ("store-reader", self._reads, False)):
            t = threading.Thread(target=self._serve, args=(q, group), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self.inline:
            self._inline_write, self._inline_read = self._connect(), self._connect()
        self._started = True

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        self._writes.put(None)
        self._reads.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()
        for conn in (self._inline_write, self._inline_read):
            if conn is not None:
                conn.close()
        self._inline_write = self._inline_read = None

    # -- public API ------------------------------------------------------------------------------
    async def write(self, op: Callable[[Tx], T]) -> T:
        """Run ``op`` in the next group commit; return once it is durable."""
        if self._inline_write is not None:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[T] = loop.create_future()
            self._pending.append((op, fut))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush_inline)
            return await fut
        job = _Job(op)
        self._writes.put(job)
        return await asyncio.wrap_future(job.future)  # type: ignore[no-any-return]

    async def read(self, op: Callable[[Tx], T]) -> T:
        if self._inline_read is not None:
            return op(Tx(self._inline_read, self.dialect, self._now(self._inline_read)))
        job = _Job(op)
        self._reads.put(job)
        return await asyncio.wrap_future(job.future)  # type: ignore[no-any-return]

    def write_sync(self, op: Callable[[Tx], T]) -> T:
        job = _Job(op)
        self._writes.put(job)
        return job.future.result()  # type: ignore[no-any-return]

    # -- engine ----------------------------------------------------------------------------------
    def _serve(self, jobs: queue.SimpleQueue[_Job | None], group: bool) -> None:
        conn = self._connect()
        try:
            while True:
                first = jobs.get()
                if first is None:
                    return
                batch = [first]
                while group and len(batch) < _MAX_GROUP:
                    try:
                        nxt = jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        jobs.put(None)
                        break
                    batch.append(nxt)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _execute(
        self, conn: DbConnection, ops: list[Callable[[Tx], Any]]
    ) -> list[tuple[Any, Exception | None]]:
        """Run ops in one transaction, each in its own savepoint, and commit. Raises if the commit fails."""
        results: list[tuple[Any, Exception | None]] = []
        self._begin(conn)
        tx = Tx(conn, self.dialect, self._now(conn))
        if len(ops) == 1:  # nothing to isolate it from: no savepoint, a failure rolls back the transaction
            try:
                value = ops[0](tx)
            except Exception as exc:
                conn.rollback()
                if self.dialect.is_integrity_error(exc):
                    exc = IntegrityError(str(exc))
                return [(None, exc)]
            conn.commit()
            self.commits += 1
            return [(value, None)]
        for op in ops:
            conn.execute("SAVEPOINT op")
            try:
                value = op(tx)
            except Exception as exc:
                conn.execute("ROLLBACK TO SAVEPOINT op")
                conn.execute("RELEASE SAVEPOINT op")
                if self.dialect.is_integrity_error(exc):
                    exc = IntegrityError(str(exc))
                results.append((None, exc))
            else:
                conn.execute("RELEASE SAVEPOINT op")
                results.append((value, None))
        conn.commit()
        self.commits += 1
        return results

    def _flush_inline(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending[:_MAX_GROUP], self._pending[_MAX_GROUP:]
        if self._pending:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_inline)
        conn = self._inline_write
        assert conn is not None
        try:
            results = self._execute(conn, [op for op, _ in batch])
        except Exception as exc:
            log.exception("store transaction failed")
            try:
                conn.rollback()
            except Exception:
                pass
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreError(f"store transaction failed: {exc}"))
            return
        for (_, fut), (value, err) in zip(batch, results, strict=True):
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(value)

    def _run_batch(self, conn: DbConnection, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        try:
            outcome = self._execute(conn, [job.op for job in live])
            results = [(job, value, err) for job, (value, err) in zip(live, outcome, strict=True)]
        except Exception as exc:  # the transaction itself failed: nothing in it is durable
            log.exception("store transaction failed")
            try:
                conn.rollback()
            except Exception:
                pass
            for job in live:
                if not job.future.done():
                    job.future.set_exception(StoreError(f"store transaction failed: {exc}"))
            return
        for job, value, err in results:
            if err is not None:
                job.future.set_exception(err)
            else:
                job.future.set_result(value)

    def _begin(self, conn: DbConnection) -> None:
        conn.execute("BEGIN")


def open_store(url: str) -> Store:
    """``sqlite:///path/to.db`` or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        from vivace.server.store.sqlite import SQLiteStore

        return SQLiteStore(url[len("sqlite:///") - 1 :] if url.startswith("sqlite:////") else url[10:])
    if url.startswith(("postgresql://", "postgres://")):
        from vivace.server.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://...")
