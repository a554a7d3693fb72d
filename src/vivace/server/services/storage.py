"""Dict and Queue: named or ephemeral storage objects and their contents, as store operations.

Keys and values arrive as the client's pickles and are stored as they are; a Dict compares keys by the
sha256 of their pickle. Every operation is one statement or one transaction, so the guarantees hold
across control-plane replicas on Postgres as they do on SQLite's single writer:

- ``dict_put(..., skip_if_exists=True)`` is one ``INSERT ... ON CONFLICT DO NOTHING``: of any number of
  concurrent puts of one key exactly one reports ``True`` (usable as a lock);
- ``queue_get`` deletes the rows it returns in the statement that picks them (``DELETE ... RETURNING``,
  rows claimed with ``SKIP LOCKED`` on Postgres): each item goes to exactly one getter.

A Queue partition lives until ``ttl`` seconds after its last put; expired partitions read as empty and
are purged by ``expire_partitions``. Ephemeral objects live while their client heartbeats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from vivace.protocol import ids
from vivace.protocol import objects as limits
from vivace.server.errors import Conflict, Invalid, NotFound, TooLarge
from vivace.server.store.base import Tx

KINDS = {"dict": ids.DICT, "queue": ids.QUEUE, "volume": ids.VOLUME, "secret": ids.SECRET}
DEFAULT_PARTITION = ""


# -- objects ----------------------------------------------------------------------------------------
def _prefix(kind: str) -> str:
    if kind not in KINDS:
        raise Invalid(f"unknown object kind {kind!r}; one of {', '.join(KINDS)}")
    return KINDS[kind]


def _check_name(name: str) -> None:
    problem = limits.name_problem(name)
    if problem:
        raise Invalid(problem, code="invalid_name")


def lookup(tx: Tx, kind: str, name: str, create_if_missing: bool = False) -> tuple[str, bool]:
    """The id of the ``kind`` named ``name``, and whether this call created it."""
    prefix = _prefix(kind)
    _check_name(name)
    found = tx.scalar("SELECT id FROM objects WHERE kind = ? AND name = ?", (kind, name))
    if found is not None:
        return str(found), False
    if not create_if_missing:
        raise NotFound(f"{kind} {name!r} not found (create it, or pass create_if_missing=True)")
    oid = ids.new_id(prefix)
    added = tx.execute(
        "INSERT INTO objects (id, kind, name, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (kind, name) DO NOTHING",
        (oid, kind, name, tx.now),
    )
    if added:
        return oid, True
    # another replica created it in between: the first one wins
    return str(tx.scalar("SELECT id FROM objects WHERE kind = ? AND name = ?", (kind, name))), False


def create(tx: Tx, kind: str, name: str) -> str:
    oid, created = lookup(tx, kind, name, create_if_missing=True)
    if not created:
        raise Conflict(f"{kind} {name!r} already exists", code="already_exists")
    return oid


def create_ephemeral(tx: Tx, kind: str) -> str:
    oid = ids.new_id(_prefix(kind))
    tx.execute(
        "INSERT INTO objects (id, kind, name, created_at, heartbeat_at) VALUES (?, ?, NULL, ?, ?)",
        (oid, kind, tx.now, tx.now),
    )
    return oid


def heartbeat(tx: Tx, object_id: str) -> None:
    if not tx.execute(
        "UPDATE objects SET heartbeat_at = ? WHERE id = ? AND name IS NULL", (tx.now, object_id)
    ):
        raise NotFound(f"ephemeral object {object_id} not found (it expired or was deleted)")


def delete_ephemeral(tx: Tx, object_id: str) -> None:
    if tx.scalar("SELECT id FROM objects WHERE id = ? AND name IS NULL", (object_id,)) is None:
        raise NotFound(f"ephemeral object {object_id} not found")
    _drop(tx, object_id)


def get(tx: Tx, kind: str, object_id: str) -> None:
    """Raise ``NotFound`` unless ``object_id`` is a live ``kind``."""
    if tx.scalar("SELECT kind FROM objects WHERE id = ?", (object_id,)) != kind:
        raise NotFound(f"{kind} {object_id} not found")


def list_named(tx: Tx, kind: str) -> list[tuple[str, str, float]]:
    """``(name, id, created_at)`` of every named ``kind``, by name."""
    _prefix(kind)
    rows = tx.fetchall(
        "SELECT name, id, created_at FROM objects WHERE kind = ? AND name IS NOT NULL ORDER BY name", (kind,)
    )
    return [(str(n), str(i), float(c)) for n, i, c in rows]


def delete(tx: Tx, kind: str, name: str) -> str:
    oid, _ = lookup(tx, kind, name)
    _drop(tx, oid)
    return oid


def _drop(tx: Tx, object_id: str) -> None:
    tx.execute("DELETE FROM dict_entries WHERE dict_id = ?", (object_id,))
    tx.execute("DELETE FROM queue_items WHERE queue_id = ?", (object_id,))
    tx.execute("DELETE FROM queue_partitions WHERE queue_id = ?", (object_id,))
    tx.execute("DELETE FROM volume_files WHERE volume_id = ?", (object_id,))
    tx.execute("DELETE FROM volumes WHERE volume_id = ?", (object_id,))
    tx.execute("DELETE FROM secrets WHERE object_id = ?", (object_id,))
    tx.execute("DELETE FROM objects WHERE id = ?", (object_id,))


def collect_ephemeral(tx: Tx, timeout: float) -> list[str]:
    """Delete ephemeral objects whose client stopped heartbeating ``timeout`` seconds ago."""
    gone = [
        str(r[0])
        for r in tx.fetchall(
            "SELECT id FROM objects WHERE name IS NULL AND heartbeat_at < ?", (tx.now - timeout,)
        )
    ]
    for oid in gone:
        _drop(tx, oid)
    return gone


# -- Dict -------------------------------------------------------------------------------------------
def _key_hash(key: bytes) -> str:
    if len(key) > limits.MAX_KEY_BYTES:
        raise TooLarge(f"a Dict key is {len(key):,} bytes pickled; the limit is {limits.MAX_KEY_BYTES:,}")
    return hashlib.sha256(key).hexdigest()


def _check_value(value: bytes, what: str) -> None:
    if len(value) > limits.MAX_VALUE_BYTES:
        raise TooLarge(f"{what} is {len(value):,} bytes pickled; the limit is {limits.MAX_VALUE_BYTES:,}")


def dict_put(tx: Tx, dict_id: str, items: Sequence[tuple[bytes, bytes]], skip_if_exists: bool = False) -> int:
    """Write ``items``; with ``skip_if_exists`` only keys not yet present. Returns how many were written."""
    get(tx, "dict", dict_id)
    rows = []
    for key, value in items:
        _check_value(value, "a Dict value")
        rows.append((dict_id, _key_hash(key), key, value, tx.now))
    action = (
        "DO NOTHING" if skip_if_exists else "DO UPDATE SET v = excluded.v, updated_at = excluded.updated_at"
    )
    written = 0
    for row in rows:
        written += tx.execute(
            "INSERT INTO dict_entries (dict_id, key_hash, k, v, updated_at) VALUES (?, ?, ?, ?, ?) "
            f"ON CONFLICT (dict_id, key_hash) {action}",
            row,
        )
    return written


def dict_get(tx: Tx, dict_id: str, key: bytes) -> bytes | None:
    get(tx, "dict", dict_id)
    value = tx.scalar(
        "SELECT v FROM dict_entries WHERE dict_id = ? AND key_hash = ?", (dict_id, _key_hash(key))
    )
    return None if value is None else bytes(value)


def dict_pop(tx: Tx, dict_id: str, key: bytes) -> bytes | None:
    get(tx, "dict", dict_id)
    row = tx.fetchone(
        "DELETE FROM dict_entries WHERE dict_id = ? AND key_hash = ? RETURNING v", (dict_id, _key_hash(key))
    )
    return None if row is None else bytes(row[0])


def dict_len(tx: Tx, dict_id: str) -> int:
    get(tx, "dict", dict_id)
    return int(tx.scalar("SELECT COUNT(*) FROM dict_entries WHERE dict_id = ?", (dict_id,)))


def dict_items(tx: Tx, dict_id: str, after: str = "", limit: int = 1000) -> list[tuple[str, bytes, bytes]]:
    """A page of ``(cursor, key, value)`` in key-hash order after ``after``; the last cursor continues it."""
    get(tx, "dict", dict_id)
    rows = tx.fetchall(
        "SELECT key_hash, k, v FROM dict_entries WHERE dict_id = ? AND key_hash > ? ORDER BY key_hash LIMIT ?",
        (dict_id, after, max(1, min(limit, limits.MAX_BATCH))),
    )
    return [(str(h), bytes(k), bytes(v)) for h, k, v in rows]


def dict_clear(tx: Tx, dict_id: str) -> int:
    get(tx, "dict", dict_id)
    return tx.execute("DELETE FROM dict_entries WHERE dict_id = ?", (dict_id,))


# -- Queue ------------------------------------------------------------------------------------------
def _part(partition: str | None) -> str:
    problem = limits.partition_problem(partition)
    if problem:
        raise Invalid(problem, code="invalid_partition")
    return partition or DEFAULT_PARTITION


def _live_part(tx: Tx, queue_id: str, part: str) -> bool:
    """Whether the partition exists and has not expired (an expired one is purged here)."""
    expires = tx.scalar(
        "SELECT expires_at FROM queue_partitions WHERE queue_id = ? AND part = ?", (queue_id, part)
    )
    if expires is None:
        return False
    if float(expires) <= tx.now:
        _purge(tx, queue_id, part)
        return False
    return True


def _purge(tx: Tx, queue_id: str, part: str) -> None:
    tx.execute("DELETE FROM queue_items WHERE queue_id = ? AND part = ?", (queue_id, part))
    tx.execute("DELETE FROM queue_partitions WHERE queue_id = ? AND part = ?", (queue_id, part))


def queue_put(
    tx: Tx, queue_id: str, values: Sequence[bytes], partition: str | None = None,
    ttl: float = limits.DEFAULT_PARTITION_TTL,
) -> int:  # fmt: skip
    """Append ``values`` to the partition and extend its life to ``ttl`` seconds from now."""
    get(tx, "queue", queue_id)
    part = _part(partition)
    if not 0 < ttl <= limits.MAX_PARTITION_TTL:
        raise Invalid(f"partition_ttl must be within (0, {limits.MAX_PARTITION_TTL:g}] seconds, not {ttl}")
    if len(values) > limits.MAX_BATCH:
        raise TooLarge(f"{len(values):,} items in one put; the limit is {limits.MAX_BATCH:,}")
    for value in values:
        _check_value(value, "a Queue item")
    _live_part(tx, queue_id, part)  # purges an expired partition: its old items do not come back
    tx.execute(
        "INSERT INTO queue_partitions (queue_id, part, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (queue_id, part) DO UPDATE SET expires_at = excluded.expires_at",
        (queue_id, part, tx.now + ttl),
    )
    for value in values:
        tx.execute(
            "INSERT INTO queue_items (queue_id, part, v, created_at) VALUES (?, ?, ?, ?)",
            (queue_id, part, value, tx.now),
        )
    return len(values)


def queue_get(tx: Tx, queue_id: str, n: int = 1, partition: str | None = None) -> list[bytes]:
    """Remove and return up to ``n`` items from the head of the partition; each item goes to one caller."""
    get(tx, "queue", queue_id)
    part = _part(partition)
    if not 1 <= n <= limits.MAX_BATCH:
        raise Invalid(f"n must be within 1..{limits.MAX_BATCH}, not {n}")
    if not _live_part(tx, queue_id, part):
        return []
    rows = tx.fetchall(
        "DELETE FROM queue_items WHERE seq IN (SELECT seq FROM queue_items WHERE queue_id = ? AND part = ? "
        f"ORDER BY seq LIMIT ?{tx.dialect.skip_locked}) RETURNING seq, v",
        (queue_id, part, n),
    )
    return [bytes(v) for _seq, v in sorted(rows, key=lambda r: int(r[0]))]


def queue_peek(tx: Tx, queue_id: str, n: int = 1, partition: str | None = None) -> list[bytes]:
    get(tx, "queue", queue_id)
    part = _part(partition)
    if not _live_part(tx, queue_id, part):
        return []
    rows = tx.fetchall(
        "SELECT v FROM queue_items WHERE queue_id = ? AND part = ? ORDER BY seq LIMIT ?",
        (queue_id, part, max(1, min(n, limits.MAX_BATCH))),
    )
    return [bytes(r[0]) for r in rows]


def queue_len(tx: Tx, queue_id: str, partition: str | None = None, total: bool = False) -> int:
    """Items in the partition, or with ``total`` in every live partition."""
    get(tx, "queue", queue_id)
    if total:
        return int(
            tx.scalar(
                "SELECT COUNT(*) FROM queue_items i JOIN queue_partitions p "
                "ON p.queue_id = i.queue_id AND p.part = i.part WHERE i.queue_id = ? AND p.expires_at > ?",
                (queue_id, tx.now),
            )
        )
    part = _part(partition)
    if not _live_part(tx, queue_id, part):
        return 0
    return int(
        tx.scalar("SELECT COUNT(*) FROM queue_items WHERE queue_id = ? AND part = ?", (queue_id, part))
    )


def queue_clear(tx: Tx, queue_id: str, partition: str | None = None, everything: bool = False) -> None:
    get(tx, "queue", queue_id)
    if everything:
        if partition is not None:
            raise Invalid("clear takes a partition or all=True, not both")
        tx.execute("DELETE FROM queue_items WHERE queue_id = ?", (queue_id,))
        tx.execute("DELETE FROM queue_partitions WHERE queue_id = ?", (queue_id,))
        return
    _purge(tx, queue_id, _part(partition))


def expire_partitions(tx: Tx) -> int:
    """Purge every partition past its TTL; returns how many."""
    rows = tx.fetchall("SELECT queue_id, part FROM queue_partitions WHERE expires_at <= ?", (tx.now,))
    for queue_id, part in rows:
        _purge(tx, str(queue_id), str(part))
    return len(rows)
