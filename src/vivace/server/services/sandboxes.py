"""Sandboxes: one container each, of a hidden function that holds its spec.

The function row is never active, so the autoscaler leaves it alone; the sandbox's container is created
here, placed by the scheduler like any other, and started by a worker that sees ``spec["sandbox"]``.
A sandbox's state, exit code and end reason are its container's.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from vivace.protocol import ids
from vivace.protocol.functions import FunctionSpec
from vivace.server.errors import ApiError, Gone, NotFound
from vivace.server.services.apps import LIVE_STATES
from vivace.server.services.containers import create_container, request_stop
from vivace.server.store.base import Tx

_STATES = {"pending": "pending", "assigned": "pending", "running": "running", "stopping": "stopping"}
MAX_LIST = 1000


class NameTaken(ApiError):
    status, code = 409, "already_exists"


def create(tx: Tx, app_id: str, spec: FunctionSpec, name: str | None, tags: dict[str, str]) -> dict[str, str]:
    state = tx.scalar("SELECT state FROM apps WHERE id = ?", (app_id,))
    if state is None:
        raise NotFound(f"app {app_id} does not exist")
    if state not in LIVE_STATES:
        raise Gone(f"app {app_id} has stopped: a sandbox needs a running or deployed app")
    if name is not None and tx.scalar(
        "SELECT id FROM sandboxes WHERE app_id = ? AND live_name = ?", (app_id, name)
    ):
        raise NameTaken(f"a running sandbox of app {app_id} is already called {name!r}")
    sid, fid = ids.new_id(ids.SANDBOX), ids.new_id(ids.FUNCTION)
    raw = spec.to_dict()
    raw["name"] = sid
    tx.execute(
        "INSERT INTO functions (id, app_id, name, spec, definition, created_at, active) "
        "VALUES (?, ?, ?, ?, NULL, ?, 0)",
        (fid, app_id, sid, json.dumps(raw), tx.now),
    )
    cid = create_container(tx, fid, app_id, raw)
    tx.execute(
        "INSERT INTO sandboxes (id, app_id, function_id, container_id, name, live_name, tags, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (sid, app_id, fid, cid, name, name, json.dumps(tags), tx.now),
    )
    tcp = set((spec.sandbox or {}).get("tcp_ports") or [])
    for port in (spec.sandbox or {}).get("ports") or []:
        tx.execute(
            "INSERT INTO sandbox_tunnels (token, sandbox_id, port, tcp) VALUES (?, ?, ?, ?)",
            (secrets.token_urlsafe(24), sid, int(port), int(port in tcp)),
        )
    return {"sandbox_id": sid, "container_id": cid, "app_id": app_id}


def tunnels(tx: Tx, sandbox_id: str) -> dict[int, tuple[str, bool, int | None]]:
    """Port -> (token, whether it is also a raw TCP tunnel, the port last listened on for it)."""
    get(tx, sandbox_id)
    rows = tx.fetchall(
        "SELECT port, token, tcp, listen_port FROM sandbox_tunnels WHERE sandbox_id = ?", (sandbox_id,)
    )
    return {int(port): (str(token), bool(tcp), listen) for port, token, tcp, listen in rows}


def set_listen_port(tx: Tx, token: str, port: int) -> None:
    tx.execute("UPDATE sandbox_tunnels SET listen_port = ? WHERE token = ?", (port, token))


def running(tx: Tx, sandbox_ids: list[str]) -> set[str]:
    """Those of the sandboxes whose container has not stopped."""
    marks = ", ".join("?" for _ in sandbox_ids)
    rows = tx.fetchall(
        "SELECT s.id FROM sandboxes s JOIN containers c ON c.id = s.container_id "
        f"WHERE s.id IN ({marks}) AND c.state <> 'stopped'",
        tuple(sandbox_ids),
    )
    return {str(r[0]) for r in rows}


def tunnel(tx: Tx, token: str) -> tuple[str, int]:
    """The (sandbox, port) a tunnel token opens."""
    row = tx.fetchone("SELECT sandbox_id, port FROM sandbox_tunnels WHERE token = ?", (token,))
    if row is None:
        raise NotFound("no such tunnel")
    return str(row[0]), int(row[1])


_COLUMNS = (
    "SELECT s.id, s.app_id, s.name, s.tags, s.created_at, c.id, c.worker_id, c.state, c.started_at, "
    "c.stopped_at, c.exit_code, c.stop_reason FROM sandboxes s JOIN containers c ON c.id = s.container_id"
)


def _row(r: Any) -> dict[str, Any]:
    sid, app_id, name, tags, created, cid, wid, state, started, stopped, code, reason = r
    finished = state == "stopped"
    return {
        "sandbox_id": sid,
        "app_id": app_id,
        "name": name,
        "tags": json.loads(tags),
        "created_at": created,
        "container_id": cid,
        "worker_id": wid,
        "state": "finished" if finished else _STATES.get(state, state),
        "started_at": started,
        "finished_at": stopped,
        "returncode": code if finished else None,
        "reason": reason if finished else None,
        "result": outcome(code, reason) if finished else None,
    }


def outcome(code: int | None, reason: str | None) -> str:
    """How a finished sandbox ended: ``success``, ``failure``, ``terminated``, ``timeout``, ``oom`` or
    ``error`` (it never started)."""
    why = reason or ""
    if why.startswith(("timeout", "stopped: timeout", "idle timeout", "stopped: idle timeout")):
        return "timeout"
    if why.startswith(("failed to start", "startup timed out", "unschedulable")):
        return "error"
    if why.startswith("out of memory"):
        return "oom"
    if "terminated" in why or why.startswith("stopped") or why in ("app stopped", "worker lost"):
        return "terminated"
    return "success" if code == 0 else "failure"


def get(tx: Tx, sandbox_id: str) -> dict[str, Any]:
    r = tx.fetchone(_COLUMNS + " WHERE s.id = ?", (sandbox_id,))
    if r is None:
        raise NotFound(f"sandbox {sandbox_id} does not exist")
    return _row(r)


def find(tx: Tx, app_id: str, name: str) -> dict[str, Any]:
    r = tx.fetchone(_COLUMNS + " WHERE s.app_id = ? AND s.live_name = ?", (app_id, name))
    if r is None:
        raise NotFound(f"app {app_id} has no running sandbox called {name!r}")
    return _row(r)


def list_sandboxes(
    tx: Tx, *, app_id: str | None, tags: dict[str, str], include_finished: bool = False
) -> list[dict[str, Any]]:
    where, params = [], []
    if app_id:
        where.append("s.app_id = ?")
        params.append(app_id)
    if not include_finished:
        where.append("c.state <> 'stopped'")
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    rows = [_row(r) for r in tx.fetchall(_COLUMNS + clause + " ORDER BY s.created_at DESC", params)]
    return [r for r in rows if all(r["tags"].get(k) == v for k, v in tags.items())][:MAX_LIST]


def terminate(tx: Tx, sandbox_id: str) -> str:
    info = get(tx, sandbox_id)
    request_stop(tx, info["container_id"], "terminated by request")
    return str(info["container_id"])


def snapshot_image(tx: Tx, sandbox_id: str, digest: str, size: int) -> str:
    """The image the sandbox started from plus a ``snapshot`` step whose layer is the blob ``digest``
    (recorded at once: nothing to build); ready immediately. Returns its id."""
    from vivace.protocol import images as iproto
    from vivace.server.services import images

    spec = json.loads(
        tx.scalar(
            "SELECT f.spec FROM sandboxes s JOIN functions f ON f.id = s.function_id WHERE s.id = ?",
            (sandbox_id,),
        )
    )
    if not spec.get("image_id"):
        raise ApiError(
            "snapshot_filesystem needs a sandbox started from an Image", code="invalid", status=422
        )
    steps = [*images.get(tx, spec["image_id"]).steps, {"kind": "snapshot", "digest": digest}]
    key = iproto.layer_keys(steps)[-1]
    tx.execute(
        "INSERT INTO layers (key, digest, size, created_at, config) VALUES (?, ?, ?, ?, NULL) "
        "ON CONFLICT (key) DO NOTHING",
        (key, digest, size, tx.now),
    )
    return images.register(tx, steps).id


def set_tags(tx: Tx, sandbox_id: str, tags: dict[str, str]) -> None:
    get(tx, sandbox_id)
    tx.execute("UPDATE sandboxes SET tags = ? WHERE id = ?", (json.dumps(tags), sandbox_id))
