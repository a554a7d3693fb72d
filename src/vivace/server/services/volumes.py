"""Volumes as store operations: a version number and one row per path; file content lives in the blob
store under its sha256 (``digest``), so copies share content and the same bytes are stored once.

A commit is one transaction that first bumps the volume's version (``INSERT ... ON CONFLICT DO UPDATE``,
which on Postgres also serialises commits to one volume across replicas) and then applies its operations
in order; any failing operation rolls the whole commit back. Commits merge: two containers that change
different files both keep their changes, and for one file the later commit wins.
"""

from __future__ import annotations

from typing import Any

from vivace.protocol.volumes import DIRECTORY, FILE, parent_dirs
from vivace.server.errors import Conflict, NotFound
from vivace.server.services import storage
from vivace.server.store.base import Tx

COLUMNS = "path, digest, size, mode, mtime, version"


def version(tx: Tx, volume_id: str) -> int:
    storage.get(tx, "volume", volume_id)
    return int(tx.scalar("SELECT version FROM volumes WHERE volume_id = ?", (volume_id,)) or 0)


def _entry(row: Any) -> dict[str, Any]:
    path, digest, size, mode, mtime, ver = row
    return {
        "path": str(path),
        "type": DIRECTORY if digest == "" else FILE,
        "digest": str(digest) or None,
        "size": int(size),
        "mode": int(mode),
        "mtime": float(mtime),
        "version": int(ver),
    }


def _row(tx: Tx, volume_id: str, path: str) -> dict[str, Any] | None:
    row = tx.fetchone(
        f"SELECT {COLUMNS} FROM volume_files WHERE volume_id = ? AND path = ?", (volume_id, path)
    )
    return None if row is None else _entry(row)


def _under(tx: Tx, volume_id: str, path: str) -> list[dict[str, Any]]:
    """Every entry below directory ``path`` ('' is the root), by path."""
    if not path:
        rows = tx.fetchall(
            f"SELECT {COLUMNS} FROM volume_files WHERE volume_id = ? ORDER BY path", (volume_id,)
        )
    else:
        prefix = path + "/"
        rows = tx.fetchall(
            f"SELECT {COLUMNS} FROM volume_files WHERE volume_id = ? AND substr(path, 1, ?) = ? ORDER BY path",
            (volume_id, len(prefix), prefix),
        )
    return [_entry(r) for r in rows]


def entries(tx: Tx, volume_id: str, path: str, recursive: bool) -> tuple[int, list[dict[str, Any]]]:
    """The volume's version and the entries at ``path``: a file itself, or a directory's children
    (all descendants with ``recursive``). A path that does not exist is ``NotFound``."""
    ver = version(tx, volume_id)
    if path:
        own = _row(tx, volume_id, path)
        if own is None:
            raise NotFound(f"no file or directory {path!r} in volume {volume_id}", code="no_such_path")
        if own["type"] == FILE:
            return ver, [own]
    below = _under(tx, volume_id, path)
    if not recursive:
        depth = path.count("/") + 1 if path else 0
        below = [e for e in below if e["path"].count("/") == depth]
    return ver, below


def file_digest(tx: Tx, volume_id: str, path: str) -> tuple[str, int]:
    """The content digest and size of file ``path``."""
    storage.get(tx, "volume", volume_id)
    found = _row(tx, volume_id, path) if path else None
    if found is None:
        raise NotFound(f"no file {path!r} in volume {volume_id}", code="no_such_path")
    if found["type"] != FILE:
        raise Conflict(f"{path!r} is a directory in volume {volume_id}", code="is_a_directory")
    return str(found["digest"]), int(found["size"])


def commit(tx: Tx, volume_id: str, ops: list[dict[str, Any]]) -> int:
    """Apply validated ``ops`` (``protocol.volumes.check_ops``) as one new version; return it."""
    storage.get(tx, "volume", volume_id)
    row = tx.fetchone(
        "INSERT INTO volumes (volume_id, version, updated_at) VALUES (?, 1, ?) ON CONFLICT (volume_id) "
        "DO UPDATE SET version = volumes.version + 1, updated_at = excluded.updated_at RETURNING version",
        (volume_id, tx.now),
    )
    assert row is not None
    ver = int(row[0])
    for op in ops:
        kind = op["op"]
        if kind == "put":
            _put(tx, volume_id, ver, op)
        elif kind == "mkdir":
            _mkdir(tx, volume_id, ver, op["path"], op["mode"], op["mtime"])
        elif kind == "rm":
            _rm(tx, volume_id, op["path"], op["recursive"])
        else:
            _cp(tx, volume_id, ver, op["src"], op["dst"])
    return ver


def _write(
    tx: Tx, volume_id: str, ver: int, path: str, digest: str, size: int, mode: int, mtime: float
) -> None:
    tx.execute(
        "INSERT INTO volume_files (volume_id, path, digest, size, mode, mtime, version) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (volume_id, path) DO UPDATE SET digest = excluded.digest, size = excluded.size, "
        "mode = excluded.mode, mtime = excluded.mtime, version = excluded.version",
        (volume_id, path, digest, size, mode, mtime, ver),
    )


def _parents(tx: Tx, volume_id: str, ver: int, path: str, mtime: float) -> None:
    for parent in parent_dirs(path):
        found = _row(tx, volume_id, parent)
        if found is None:
            _write(tx, volume_id, ver, parent, "", 0, 0o755, mtime)
        elif found["type"] == FILE:
            raise Conflict(f"cannot create {path!r}: {parent!r} is a file", code="not_a_directory")


def _put(tx: Tx, volume_id: str, ver: int, op: dict[str, Any]) -> None:
    path, mtime = op["path"], op["mtime"] or tx.now
    _parents(tx, volume_id, ver, path, mtime)
    found = _row(tx, volume_id, path)
    if found is not None:
        if found["type"] == DIRECTORY:
            raise Conflict(f"cannot write file {path!r}: it is a directory", code="is_a_directory")
        if op["exclusive"]:
            raise Conflict(
                f"{path!r} already exists in the volume (use force=True to overwrite)", code="exists"
            )
    _write(tx, volume_id, ver, path, op["digest"], op["size"], op["mode"], mtime)


def _mkdir(tx: Tx, volume_id: str, ver: int, path: str, mode: int, mtime: float | None) -> None:
    stamp = mtime or tx.now
    _parents(tx, volume_id, ver, path, stamp)
    found = _row(tx, volume_id, path)
    if found is None:
        _write(tx, volume_id, ver, path, "", 0, mode, stamp)
    elif found["type"] == FILE:
        raise Conflict(f"cannot create directory {path!r}: it is a file", code="not_a_directory")


def _rm(tx: Tx, volume_id: str, path: str, recursive: bool) -> None:
    found = _row(tx, volume_id, path)
    if found is None:
        raise NotFound(f"no file or directory {path!r} in the volume", code="no_such_path")
    if found["type"] == DIRECTORY:
        prefix = path + "/"
        children = tx.scalar(
            "SELECT COUNT(*) FROM volume_files WHERE volume_id = ? AND substr(path, 1, ?) = ?",
            (volume_id, len(prefix), prefix),
        )
        if children and not recursive:
            raise Conflict(f"directory {path!r} is not empty (use recursive=True)", code="not_empty")
        tx.execute(
            "DELETE FROM volume_files WHERE volume_id = ? AND substr(path, 1, ?) = ?",
            (volume_id, len(prefix), prefix),
        )
    tx.execute("DELETE FROM volume_files WHERE volume_id = ? AND path = ?", (volume_id, path))


def _cp(tx: Tx, volume_id: str, ver: int, src: str, dst: str) -> None:
    """Copy ``src`` to ``dst``, or into ``dst`` when that is a directory (as ``cp`` does)."""
    found = _row(tx, volume_id, src)
    if found is None:
        raise NotFound(f"no file or directory {src!r} in the volume", code="no_such_path")
    target = _row(tx, volume_id, dst) if dst else {"type": DIRECTORY}
    if target is not None and target["type"] == DIRECTORY:
        dst = f"{dst}/{src.rsplit('/', 1)[-1]}" if dst else src.rsplit("/", 1)[-1]
    if dst == src or dst.startswith(src + "/"):
        raise Conflict(f"cannot copy {src!r} into itself", code="invalid_copy")
    items = [found] + (_under(tx, volume_id, src) if found["type"] == DIRECTORY else [])
    _parents(tx, volume_id, ver, dst, tx.now)
    existing = _row(tx, volume_id, dst)
    if existing is not None and existing["type"] != found["type"]:
        raise Conflict(f"cannot copy {src!r} over {dst!r}: one is a file, the other a directory", code="type")
    for item in items:
        path = dst + item["path"][len(src) :]
        _write(tx, volume_id, ver, path, item["digest"] or "", item["size"], item["mode"], item["mtime"])


def manifest(tx: Tx, volume_id: str) -> tuple[int, list[dict[str, Any]]]:
    """Everything a worker needs to assemble a mount: the version and every entry."""
    return entries(tx, volume_id, "", recursive=True)


def digests_in_use(tx: Tx, digests: list[str]) -> set[str]:
    """Which of ``digests`` some volume's file names (blob collection must keep them)."""
    used: set[str] = set()
    for i in range(0, len(digests), 500):
        chunk = digests[i : i + 500]
        marks = ", ".join("?" for _ in chunk)
        used |= {
            str(r[0])
            for r in tx.fetchall(
                f"SELECT DISTINCT digest FROM volume_files WHERE digest IN ({marks})", tuple(chunk)
            )
        }
    return used
