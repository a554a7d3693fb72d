"""Log lines from containers and the platform, stored in batches and read by cursor.

Streams: ``stdout`` and ``stderr`` (the user's code), ``system`` (what the platform must tell: a
container that failed to start, an OOM kill, a retried input, a spend limit) and ``platform`` (the
lifecycle lines: a container's start with its phases, its stop). Each line keeps its app, function,
container, input and call where known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vivace.server.store.base import Tx

MAX_LINE = 16 * 1024
STREAMS = ("stdout", "stderr", "system", "platform")
DELETE_BATCH = 5000  # rows one retention pass deletes per statement


def append(tx: Tx, lines: list[dict[str, Any]]) -> set[str]:
    """Store lines; a line with an input (``input_seq``) and no ``call_id`` gets its input's call."""
    apps: set[str] = set()
    seqs = [int(ln["input_seq"]) for ln in lines if ln.get("input_seq") is not None and not ln.get("call_id")]
    call_of: dict[int, str] = {}
    if seqs:
        marks, vals = tx.in_list(sorted(set(seqs)))
        call_of = {
            int(s): str(c)
            for s, c in tx.fetchall(f"SELECT seq, call_id FROM inputs WHERE seq IN {marks}", vals)
        }
    for ln in lines:
        seq = ln.get("input_seq")
        tx.execute(
            "INSERT INTO logs (app_id, function_id, container_id, input_seq, call_id, stream, ts, line) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ln["app_id"],
                ln.get("function_id"),
                ln.get("container_id"),
                seq,
                ln.get("call_id") or (call_of.get(int(seq)) if seq is not None else None),
                ln.get("stream", "stdout"),
                float(ln.get("ts") or tx.now),
                str(ln["line"])[:MAX_LINE],
            ),
        )
        apps.add(ln["app_id"])
    return apps


def system(
    tx: Tx,
    app_id: str,
    line: str,
    *,
    stream: str = "system",
    function_id: str | None = None,
    container_id: str | None = None,
    call_id: str | None = None,
    input_seq: int | None = None,
) -> None:
    """One line from the platform into the app's logs."""
    append(
        tx,
        [
            {
                "app_id": app_id,
                "function_id": function_id,
                "container_id": container_id,
                "call_id": call_id,
                "input_seq": input_seq,
                "stream": stream,
                "line": line,
            }
        ],
    )


@dataclass
class LogFilter:
    app_id: str | None = None
    container_id: str | None = None
    function_ids: tuple[str, ...] | None = None  # None: any; () matches nothing
    call_id: str | None = None
    text: str | None = None
    since: float | None = None
    until: float | None = None
    streams: tuple[str, ...] | None = None


KEYS = ("id", "app_id", "function_id", "container_id", "input_seq", "call_id", "stream", "ts", "line")


def read(tx: Tx, f: LogFilter, *, cursor: int, limit: int) -> list[dict[str, Any]]:
    where: list[str] = ["id > ?"]
    params: list[object] = [cursor]
    for column, value in (("app_id", f.app_id), ("container_id", f.container_id), ("call_id", f.call_id)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    for column, values in (("function_id", f.function_ids), ("stream", f.streams)):
        if values is not None:
            if not values:
                return []
            marks, vals = tx.in_list(values)
            where.append(f"{column} IN {marks}")
            params += vals
    if f.text:
        escaped = f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("line LIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    if f.since is not None:
        where.append("ts >= ?")
        params.append(f.since)
    if f.until is not None:
        where.append("ts < ?")
        params.append(f.until)
    rows = tx.fetchall(
        f"SELECT {', '.join(KEYS)} FROM logs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
        (*params, limit),
    )
    return [dict(zip(KEYS, r, strict=True)) for r in rows]


def expire(tx: Tx, older_than: float) -> int:
    """Delete up to ``DELETE_BATCH`` lines (container logs and image build logs) written before
    ``older_than``; returns how many went (call again while it is ``DELETE_BATCH``)."""
    n = tx.execute(
        "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE ts < ? ORDER BY id LIMIT ?)",
        (older_than, DELETE_BATCH),
    )
    n += tx.execute(
        "DELETE FROM build_logs WHERE id IN (SELECT id FROM build_logs WHERE ts < ? ORDER BY id LIMIT ?)",
        (older_than, DELETE_BATCH),
    )
    return n
