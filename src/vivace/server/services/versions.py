"""Deploy versions: each ``vivace deploy`` of an app records the functions it deployed, so that
``vivace app history`` lists them and ``vivace app rollback`` puts an earlier one back.

A version is the app's base functions (not variants, not sandboxes) as they were after that deploy:
name, id, spec and the sha256 of the serialized definition (kept in ``definitions``). Recording a
version also retires the functions the deploy no longer has. A rollback re-registers the old specs
and definitions (containers running other code are asked to stop, as on a redeploy; the inputs they
held go back to the queue) and is itself recorded as a new version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from vivace.protocol.functions import FunctionSpec
from vivace.server.errors import Conflict, Invalid, NotFound
from vivace.server.services import apps, containers
from vivace.server.store.base import Tx

VERSIONS_KEPT = 20  # the newest kept per app; their images are kept from collection


def _deployed(tx: Tx, app_id: str) -> None:
    state = tx.scalar("SELECT state FROM apps WHERE id = ?", (app_id,))
    if state is None:
        raise NotFound(f"app {app_id} does not exist")
    if state != "deployed":
        raise Conflict(f"app {app_id} is {state}: only deployed apps have versions", code="not_deployed")


def record(tx: Tx, app_id: str, function_ids: list[str], note: str | None = None) -> dict[str, Any]:
    """Record the app as it is now, with ``function_ids`` as its functions, as its next version; retire
    the app's other base functions. Returns {"version", "retired": containers asked to stop}."""
    _deployed(tx, app_id)
    rows = tx.fetchall(
        "SELECT id, name, spec, definition FROM functions WHERE app_id = ? AND active = 1", (app_id,)
    )
    by_id = {r[0]: r for r in rows}
    missing = [f for f in function_ids if f not in by_id]
    if missing:
        raise Invalid(f"not active functions of app {app_id}: {', '.join(missing)}")
    wanted = set(function_ids)
    names = {by_id[f][1] for f in wanted}
    stopping: list[str] = []
    for fid, _name, spec_json, _ in rows:
        spec = json.loads(spec_json)
        if fid in wanted or spec.get("sandbox") is not None:
            continue
        if spec.get("variant_of") in names:
            continue  # a variant of a function still deployed (a redeploy retired its old code already)
        tx.execute("UPDATE functions SET active = 0 WHERE id = ?", (fid,))
        stopping += _stop_all(tx, fid, containers.REMOVED)
    functions = []
    for fid in sorted(wanted, key=lambda f: by_id[f][1]):
        _, name, spec_json, definition = by_id[fid]
        digest = None
        if definition is not None:
            data = bytes(definition)
            digest = hashlib.sha256(data).hexdigest()
            tx.execute(
                "INSERT INTO definitions (digest, data) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING",
                (digest, data),
            )
        functions.append(
            {"name": name, "function_id": fid, "spec": json.loads(spec_json), "definition": digest}
        )
    version = (
        int(tx.scalar("SELECT COALESCE(MAX(version), 0) FROM app_versions WHERE app_id = ?", (app_id,))) + 1
    )
    tx.execute(
        "INSERT INTO app_versions (app_id, version, created_at, note, functions) VALUES (?, ?, ?, ?, ?)",
        (app_id, version, tx.now, note, json.dumps(functions, sort_keys=True)),
    )
    tx.execute(
        "DELETE FROM app_versions WHERE app_id = ? AND version <= ?", (app_id, version - VERSIONS_KEPT)
    )
    return {"version": version, "retired": stopping}


def _stop_all(tx: Tx, function_id: str, reason: str) -> list[str]:
    live = [r[0] for r in tx.fetchall(
        "SELECT id FROM containers WHERE function_id = ? AND state <> 'stopped'", (function_id,)
    )]  # fmt: skip
    for cid in live:
        containers.request_stop(tx, cid, reason)
    return live


def history(tx: Tx, app_id: str) -> list[dict[str, Any]]:
    """The app's kept versions, newest first: version, created_at, note, function names."""
    rows = tx.fetchall(
        "SELECT version, created_at, note, functions FROM app_versions WHERE app_id = ? ORDER BY version DESC",
        (app_id,),
    )
    return [
        {"version": v, "created_at": at, "note": note, "functions": [f["name"] for f in json.loads(fns)]}
        for v, at, note, fns in rows
    ]


def rollback(tx: Tx, app_id: str, version: int | None) -> dict[str, Any]:
    """Deploy version ``version`` again (None: the one before the current); returns the new version."""
    _deployed(tx, app_id)
    current = tx.scalar("SELECT MAX(version) FROM app_versions WHERE app_id = ?", (app_id,))
    if current is None:
        raise Conflict(f"app {app_id} has no recorded deploys to roll back to", code="no_versions")
    target = int(current) - 1 if version is None else version
    row = tx.fetchone("SELECT functions FROM app_versions WHERE app_id = ? AND version = ?", (app_id, target))
    if row is None:
        kept = [h["version"] for h in history(tx, app_id)]
        raise NotFound(f"app {app_id} has no version {target} (kept: {', '.join(map(str, kept))})")
    if target == current:
        raise Conflict(f"version {target} is the current version", code="already_current")
    stopping: list[str] = []
    ids = []
    for f in json.loads(row[0]):
        definition = None
        if f["definition"] is not None:
            data = tx.scalar("SELECT data FROM definitions WHERE digest = ?", (f["definition"],))
            if data is None:
                raise Conflict(f"the definition of {f['name']} in version {target} is gone", code="gone")
            definition = bytes(data)
        spec = FunctionSpec.from_dict(f["spec"])
        fid, stale = apps.register_function(tx, app_id, spec, definition)
        for cid in stale:
            containers.request_stop(tx, cid, containers.ROLLED_BACK)
        stopping += stale
        ids.append(fid)
    out = record(tx, app_id, ids, note=f"rollback to version {target}")
    return {"version": out["version"], "rolled_back_to": target, "retired": stopping + out["retired"]}


def image_ids_kept(tx: Tx) -> set[str]:
    """Images that kept versions of live apps name (image collection keeps them)."""
    named: set[str] = set()
    for (fns,) in tx.fetchall(
        "SELECT v.functions FROM app_versions v JOIN apps a ON a.id = v.app_id WHERE a.state <> 'stopped'"
    ):
        for f in json.loads(fns):
            image_id = f["spec"].get("image_id")
            if image_id:
                named.add(image_id)
    return named
