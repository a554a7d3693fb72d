"""Apps and their functions: create, heartbeat, stop, deploy, look up."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from vivace.protocol import ids
from vivace.protocol.functions import FunctionSpec, SpecError
from vivace.server.errors import Conflict, Gone, NotFound
from vivace.server.store.base import Tx

LIVE_STATES = ("ephemeral", "detached", "deployed")


def create_app(tx: Tx, name: str | None, state: str, client_version: str) -> dict[str, Any]:
    """Create an ephemeral app, or create/reuse the deployed app with this name."""
    if state == "deployed":
        if not name:
            raise Conflict("a deployed app needs a name")
        row = tx.fetchone("SELECT id FROM apps WHERE name = ? AND state = 'deployed'", (name,))
        if row is not None:
            tx.execute(
                "UPDATE apps SET heartbeat_at = ?, client_version = ? WHERE id = ?",
                (tx.now, client_version, row[0]),
            )
            return {"app_id": row[0], "created": False}
    app_id = ids.new_id(ids.APP)
    tx.execute(
        "INSERT INTO apps (id, name, state, created_at, heartbeat_at, client_version) VALUES (?, ?, ?, ?, ?, ?)",
        (app_id, name, state, tx.now, tx.now, client_version),
    )
    return {"app_id": app_id, "created": True}


def heartbeat(tx: Tx, app_id: str) -> None:
    row = tx.fetchone("SELECT state FROM apps WHERE id = ?", (app_id,))
    if row is None:
        raise NotFound(f"app {app_id} does not exist")
    if row[0] not in LIVE_STATES:
        raise Gone(f"app {app_id} has stopped")
    tx.execute("UPDATE apps SET heartbeat_at = ? WHERE id = ?", (tx.now, app_id))


def stop_app(tx: Tx, app_id: str, reason: str) -> list[str]:
    """Stop an app: its functions take no more inputs and its containers stop. Returns those containers."""
    row = tx.fetchone("SELECT state FROM apps WHERE id = ?", (app_id,))
    if row is None:
        raise NotFound(f"app {app_id} does not exist")
    if row[0] == "stopped":
        return []
    tx.execute(
        "UPDATE apps SET state = 'stopped', stopped_at = ?, stop_reason = ? WHERE id = ?",
        (tx.now, reason, app_id),
    )
    tx.execute("UPDATE functions SET active = 0 WHERE app_id = ?", (app_id,))
    tx.execute("DELETE FROM web_routes WHERE app_id = ?", (app_id,))  # its URLs are free again
    rows = tx.fetchall("SELECT id FROM containers WHERE app_id = ? AND state <> 'stopped'", (app_id,))
    return [r[0] for r in rows]


def lapsed_apps(tx: Tx, older_than: float) -> list[str]:
    rows = tx.fetchall(
        "SELECT id FROM apps WHERE state = 'ephemeral' AND heartbeat_at < ?", (tx.now - older_than,)
    )
    return [r[0] for r in rows]


def register_function(
    tx: Tx, app_id: str, spec: FunctionSpec, definition: bytes | None
) -> tuple[str, list[str]]:
    """Create or update a function of an app. Returns its id and containers running an old definition."""
    state = tx.scalar("SELECT state FROM apps WHERE id = ?", (app_id,))
    if state is None:
        raise NotFound(f"app {app_id} does not exist")
    if state not in LIVE_STATES:
        raise Gone(f"app {app_id} has stopped")
    spec_json = json.dumps(spec.to_dict(), sort_keys=True)
    schedule = json.dumps(spec.schedule, sort_keys=True) if spec.schedule is not None else None
    row = tx.fetchone(
        "SELECT id, spec, definition FROM functions WHERE app_id = ? AND name = ?", (app_id, spec.name)
    )
    if row is None:
        fid = ids.new_id(ids.FUNCTION)
        tx.execute(
            "INSERT INTO functions (id, app_id, name, spec, definition, created_at, schedule) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (fid, app_id, spec.name, spec_json, definition, tx.now, schedule),
        )
        _web_routes(tx, app_id, fid, spec)
        return fid, []
    fid = row[0]
    old_def = None if row[2] is None else bytes(row[2])
    _web_routes(tx, app_id, fid, spec)
    if row[1] == spec_json and old_def == definition:
        tx.execute("UPDATE functions SET active = 1 WHERE id = ? AND active = 0", (fid,))
        return fid, []
    tx.execute(
        "UPDATE functions SET spec = ?, definition = ?, active = 1, start_failures = 0, schedule = ? "
        "WHERE id = ?",
        (spec_json, definition, schedule, fid),
    )
    stale = tx.fetchall("SELECT id FROM containers WHERE function_id = ? AND state <> 'stopped'", (fid,))
    stale_ids = [r[0] for r in stale]
    if spec.variant_of is None:
        # the variants of a redeployed function ran the old code: retire them; the next caller that
        # binds the same parameters or options re-creates them from the new definition
        prefix = spec.name + "#"
        for vid, vname in tx.fetchall(
            "SELECT id, name FROM functions WHERE app_id = ? AND active = 1", (app_id,)
        ):
            if vname.startswith(prefix):
                tx.execute("UPDATE functions SET active = 0 WHERE id = ?", (vid,))
                stale_ids += [
                    r[0]
                    for r in tx.fetchall(
                        "SELECT id FROM containers WHERE function_id = ? AND state <> 'stopped'", (vid,)
                    )
                ]
    return fid, stale_ids


def _web_routes(tx: Tx, app_id: str, fid: str, spec: FunctionSpec) -> None:
    if spec.variant_of is None:  # a variant answers calls only; its base serves the URL
        from vivace.server.services import web

        web.set_routes(tx, app_id, fid, spec)


# spec fields a variant may override (with_options, with_concurrency, with_batching)
VARIANT_OPTIONS = frozenset(
    {
        "cpu",
        "cpu_limit",
        "memory",
        "memory_limit",
        "gpu",
        "env",
        "retries",
        "timeout",
        "min_containers",
        "max_containers",
        "buffer_containers",
        "scaledown_window",
        "max_inputs",
        "target_inputs",
        "batch_max_size",
        "batch_wait_ms",
        "secrets",
        "volumes",
    }
)


def variant_spec(base: FunctionSpec, params: dict[str, Any] | None, options: dict[str, Any]) -> FunctionSpec:
    """The spec of ``base`` with parameters bound and options applied, named by its content."""
    bad = sorted(set(options) - VARIANT_OPTIONS)
    if bad:
        raise SpecError(f"options cannot change {', '.join(bad)}")
    if base.variant_of is not None:
        raise SpecError("a variant cannot have variants of its own")
    if params and not base.is_class:
        raise SpecError(f"{base.name} is a function, not a class: it takes no parameters")
    data = base.to_dict()
    if "env" in options:
        options = {**options, "env": {**base.env, **options["env"]}}
    if "secrets" in options:  # added to the function's own (a later secret wins a key both set)
        options = {
            **options,
            "secrets": [*base.secrets, *(s for s in options["secrets"] if s not in base.secrets)],
        }
    if "volumes" in options:
        options = {**options, "volumes": {**base.volumes, **options["volumes"]}}
    data.update(options)
    if data["batch_max_size"] and not base.batch_max_size:
        raise SpecError(f"{base.name} has no @batched function or method to batch")
    data["target_inputs"] = min(data["target_inputs"], data["max_inputs"])
    data["params"] = params or None
    data["variant_of"] = base.name
    key = json.dumps({"params": params or {}, "options": options}, sort_keys=True)
    data["name"] = f"{base.name}#{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return FunctionSpec.from_dict(data)


def register_variant(
    tx: Tx, base_id: str, params: dict[str, Any] | None, options: dict[str, Any]
) -> tuple[str, FunctionSpec, list[str]]:
    """Create (or reuse) the variant of a function. Returns its id, spec and stale containers."""
    row = tx.fetchone("SELECT app_id, spec, definition FROM functions WHERE id = ?", (base_id,))
    if row is None:
        raise NotFound(f"function {base_id} does not exist")
    app_id, spec_json, definition = row
    spec = variant_spec(FunctionSpec.from_dict(json.loads(spec_json)), params, options)
    fid, stale = register_function(tx, app_id, spec, None if definition is None else bytes(definition))
    return fid, spec, stale


def update_autoscaler(tx: Tx, function_id: str, changes: dict[str, Any]) -> FunctionSpec:
    raw = tx.scalar("SELECT spec FROM functions WHERE id = ?", (function_id,))
    if raw is None:
        raise NotFound(f"function {function_id} does not exist")
    data = json.loads(raw)
    data.update(changes)
    spec = FunctionSpec.from_dict(data)
    tx.execute(
        "UPDATE functions SET spec = ? WHERE id = ?",
        (json.dumps(spec.to_dict(), sort_keys=True), function_id),
    )
    return spec


@dataclass
class FunctionInfo:
    id: str
    app_id: str
    spec: FunctionSpec
    active: bool


def get_function(tx: Tx, function_id: str) -> FunctionInfo:
    row = tx.fetchone("SELECT id, app_id, spec, active FROM functions WHERE id = ?", (function_id,))
    if row is None:
        raise NotFound(f"function {function_id} does not exist")
    return FunctionInfo(row[0], row[1], FunctionSpec.from_dict(json.loads(row[2])), bool(row[3]))


def lookup_function(tx: Tx, app_name: str, name: str) -> FunctionInfo:
    row = None
    if "#" not in name:  # variants are reached through their base, never by name
        row = tx.fetchone(
            "SELECT f.id FROM functions f JOIN apps a ON a.id = f.app_id WHERE a.name = ? "
            "AND a.state = 'deployed' AND f.name = ?",
            (app_name, name),
        )
    if row is None:
        if tx.fetchone("SELECT 1 FROM apps WHERE name = ? AND state = 'deployed'", (app_name,)) is None:
            raise NotFound(f"no deployed app named {app_name!r}")
        raise NotFound(f"the deployed app {app_name!r} has no function or class named {name!r}")
    return get_function(tx, row[0])


def lookup_function_in(tx: Tx, app_id: str, name: str) -> FunctionInfo:
    """A function of a live app by name (how a container finds its own app's other functions)."""
    row = None
    if "#" not in name:
        row = tx.fetchone(
            "SELECT f.id FROM functions f JOIN apps a ON a.id = f.app_id WHERE a.id = ? AND f.name = ? "
            f"AND a.state IN {LIVE_STATES!r}",
            (app_id, name),
        )
    if row is None:
        raise NotFound(f"app {app_id} has no live function or class named {name!r}")
    return get_function(tx, row[0])


def lookup_app(tx: Tx, name: str) -> str:
    row = tx.fetchone("SELECT id FROM apps WHERE name = ? AND state = 'deployed'", (name,))
    if row is None:
        raise NotFound(f"no deployed app named {name!r}")
    return str(row[0])


def list_apps(tx: Tx, include_stopped: bool, limit: int = 200) -> list[dict[str, Any]]:
    where = "" if include_stopped else "WHERE a.state <> 'stopped'"
    rows = tx.fetchall(
        "SELECT a.id, a.name, a.state, a.created_at, a.stopped_at, a.stop_reason, "
        "(SELECT COUNT(*) FROM containers c WHERE c.app_id = a.id AND c.state <> 'stopped') "
        f"FROM apps a {where} ORDER BY a.created_at DESC LIMIT ?",
        (limit,),
    )
    keys = ("app_id", "name", "state", "created_at", "stopped_at", "stop_reason", "containers")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def list_functions(tx: Tx, app_id: str) -> list[dict[str, Any]]:
    """An app's functions (active ones: what a deploy left) with their queue, running inputs, live
    containers and the resources and scaling their spec asks for."""
    rows = tx.fetchall(
        "SELECT f.id, f.name, f.spec, f.backlog, f.running, "
        "(SELECT COUNT(*) FROM containers c WHERE c.function_id = f.id AND c.state <> 'stopped') "
        "FROM functions f WHERE f.app_id = ? AND f.active = 1 ORDER BY f.name",
        (app_id,),
    )
    out = []
    for fid, name, spec_json, backlog, running, live in rows:
        spec = json.loads(spec_json)
        if spec.get("sandbox") is not None:
            continue  # a sandbox's hidden function
        out.append({
            "function_id": fid, "name": name, "backlog": max(0, int(backlog)), "running": max(0, int(running)),
            "containers": int(live), "cpu": spec.get("cpu"), "memory": spec.get("memory"), "gpu": spec.get("gpu"),
            "min_containers": spec.get("min_containers"), "max_containers": spec.get("max_containers"),
            "timeout": spec.get("timeout"), "web": bool(spec.get("web") or any(
                (m or {}).get("web") for m in (spec.get("methods") or {}).values())),
            "schedule": spec.get("schedule"),
        })  # fmt: skip
    return out


def find_app(tx: Tx, ref: str) -> str:
    """Resolve an app id or the name of a live app."""
    if ref.startswith("ap-"):
        if tx.fetchone("SELECT 1 FROM apps WHERE id = ?", (ref,)) is None:
            raise NotFound(f"app {ref} does not exist")
        return ref
    row = tx.fetchone(
        "SELECT id FROM apps WHERE name = ? AND state <> 'stopped' ORDER BY created_at DESC LIMIT 1", (ref,)
    )
    if row is None:
        raise NotFound(f"no running app named {ref!r}")
    return str(row[0])
