"""Web endpoints' routes: which function (and method) answers each host label.

A function's routes are rewritten each time it is registered. Two deployed apps cannot claim the same
host; an app that is not deployed (``app.run()``, ``vivace serve``) gets ``-dev`` names and the newest
one wins, so a restarted ``serve`` takes over its URL at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from vivace.protocol.functions import FunctionSpec
from vivace.protocol.web import host_label
from vivace.server.errors import Conflict, NotFound
from vivace.server.store.base import Tx

LIVE = ("ephemeral", "detached", "deployed")


@dataclass(frozen=True)
class Route:
    function_id: str
    method: str | None  # the class method that answers (None: the function itself)
    spec: FunctionSpec

    @property
    def web(self) -> dict[str, object]:
        if self.method is None:
            return dict(self.spec.web or {})
        return dict(self.spec.methods[self.method].get("web") or {})


def endpoints(spec: FunctionSpec) -> dict[str, dict[str, object]]:
    """The spec's web endpoints by method ('' for the function's own)."""
    out: dict[str, dict[str, object]] = {}
    if spec.web is not None:
        out[""] = spec.web
    for name, info in spec.methods.items():
        if info.get("web") is not None:
            out[name] = info["web"]
    return out


def set_routes(tx: Tx, app_id: str, function_id: str, spec: FunctionSpec) -> dict[str, str]:
    """Point the function's endpoints' hosts at it; returns {method: host}."""
    name, state = tx.fetchone("SELECT name, state FROM apps WHERE id = ?", (app_id,)) or (None, None)
    tx.execute("DELETE FROM web_routes WHERE function_id = ?", (function_id,))
    hosts: dict[str, str] = {}
    deployed = state == "deployed"
    for method, web in endpoints(spec).items():
        label = web.get("label")
        default = spec.name if not method else f"{spec.name}-{method}"
        host = host_label(name or app_id, default, str(label) if label else None, dev=not deployed)
        if host in hosts.values():
            raise Conflict(
                f"two web endpoints of {spec.name} would both be served at {host!r}: give a label="
            )
        if deployed:
            other = tx.fetchone(
                "SELECT f.name, a.name FROM web_routes r JOIN functions f ON f.id = r.function_id "
                "JOIN apps a ON a.id = r.app_id WHERE r.host = ? AND r.deployed = 1 AND f.active = 1 "
                "AND a.state = 'deployed' AND r.function_id <> ?",
                (host, function_id),
            )
            if other is not None:
                raise Conflict(
                    f"the web endpoint {host!r} is already served by {other[0]} of deployed app "
                    f"{other[1]!r}: choose another label= (or app name)"
                )
        tx.execute(
            "INSERT INTO web_routes (function_id, method, host, app_id, deployed, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (function_id, method, host, app_id, int(deployed), tx.now),
        )
        hosts[method] = host
    return hosts


def hosts_of(tx: Tx, function_id: str) -> dict[str, str]:
    rows = tx.fetchall("SELECT method, host FROM web_routes WHERE function_id = ?", (function_id,))
    return {str(m): str(h) for m, h in rows}


def find(tx: Tx, host: str) -> Route:
    """The live endpoint a host label names (a deployed one before any dev one, then the newest)."""
    row = tx.fetchone(
        "SELECT r.function_id, r.method, f.spec FROM web_routes r JOIN functions f ON f.id = r.function_id "
        "JOIN apps a ON a.id = r.app_id WHERE r.host = ? AND f.active = 1 AND a.state IN (?, ?, ?) "
        "ORDER BY r.deployed DESC, r.created_at DESC LIMIT 1",
        (host, *LIVE),
    )
    if row is None:
        raise NotFound(f"no web endpoint is served at {host!r}")
    spec = FunctionSpec.from_dict(json.loads(row[2]))
    return Route(str(row[0]), str(row[1]) or None, spec)


# -- WebSocket messages from the client --------------------------------------------------------------

MAX_MESSAGES = 1000  # one read hands the container at most this many


def put_message(tx: Tx, call_id: str, data: bytes) -> int:
    """Append a client message to a WebSocket session (one writer per session: its gateway)."""
    seq = int(tx.scalar("SELECT COALESCE(MAX(seq), 0) FROM web_messages WHERE call_id = ?", (call_id,))) + 1
    tx.execute(
        "INSERT INTO web_messages (call_id, seq, data, created_at) VALUES (?, ?, ?, ?)",
        (call_id, seq, data, tx.now),
    )
    return seq


def messages(tx: Tx, call_id: str, after: int) -> list[tuple[int, bytes]]:
    rows = tx.fetchall(
        "SELECT seq, data FROM web_messages WHERE call_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (call_id, after, MAX_MESSAGES),
    )
    return [(int(seq), bytes(data)) for seq, data in rows]


def drop_messages(tx: Tx, call_id: str) -> None:
    tx.execute("DELETE FROM web_messages WHERE call_id = ?", (call_id,))


def forget_calls(tx: Tx, call_ids: set[str]) -> set[str]:
    """Delete finished web calls (their inputs, outputs and messages): a response, once delivered, is
    not kept. Returns the calls whose input is not done yet (cancelled, still running): ask again."""
    later = set()
    for call_id in call_ids:
        if tx.scalar("SELECT COUNT(*) FROM inputs WHERE call_id = ? AND state <> 'done'", (call_id,)):
            later.add(call_id)
            continue
        if tx.scalar("SELECT kind FROM calls WHERE id = ?", (call_id,)) != "web":
            continue
        for table, key in (("outputs", "call_id"), ("inputs", "call_id"), ("web_messages", "call_id"),
                           ("calls", "id")):  # fmt: skip
            tx.execute(f"DELETE FROM {table} WHERE {key} = ?", (call_id,))
    return later
