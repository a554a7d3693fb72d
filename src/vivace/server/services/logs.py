"""Log lines from containers and the platform, stored in batches and read by cursor."""

from __future__ import annotations

from typing import Any

from vivace.server.store.base import Tx

MAX_LINE = 16 * 1024


def append(tx: Tx, lines: list[dict[str, Any]]) -> set[str]:
    apps: set[str] = set()
    for ln in lines:
        tx.execute(
            "INSERT INTO logs (app_id, function_id, container_id, input_seq, stream, ts, line) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                ln["app_id"],
                ln.get("function_id"),
                ln.get("container_id"),
                ln.get("input_seq"),
                ln.get("stream", "stdout"),
                float(ln.get("ts") or tx.now),
                str(ln["line"])[:MAX_LINE],
            ),
        )
        apps.add(ln["app_id"])
    return apps


def read(
    tx: Tx, *, app_id: str | None, container_id: str | None, cursor: int, limit: int, text: str | None = None
) -> list[dict[str, Any]]:
    where: list[str] = ["id > ?"]
    params: list[object] = [cursor]
    if app_id:
        where.append("app_id = ?")
        params.append(app_id)
    if container_id:
        where.append("container_id = ?")
        params.append(container_id)
    if text:
        where.append("line LIKE ?")
        params.append(f"%{text}%")
    rows = tx.fetchall(
        "SELECT id, app_id, function_id, container_id, input_seq, stream, ts, line FROM logs "
        f"WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
        (*params, limit),
    )
    keys = ("id", "app_id", "function_id", "container_id", "input_seq", "stream", "ts", "line")
    return [dict(zip(keys, r, strict=True)) for r in rows]
