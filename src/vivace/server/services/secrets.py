"""Secrets: named or inline sets of environment variables, sealed at rest, opened only for a worker.

A secret is an ``objects`` row of kind ``secret`` plus a ``secrets`` row holding its environment as JSON
sealed by the server's :class:`~vivace.server.secretbox.SecretBox` (associated data: the object id).

- A **named** secret (``vivace secret create``, ``Secret.objects.create``) lives until deleted.
- An **inline** secret (``Secret.from_dict``, ``from_local_environ``, ``from_dotenv``) has no name and
  belongs to an app: registering the same values again for that app (a redeploy) reuses its row,
  found by the values' keyed digest. Its ``heartbeat_at`` stays NULL, so ``collect_ephemeral`` never
  takes it; ``collect_inline`` deletes it once its app has stopped.

Nothing here returns values to a caller of the API: ``env_for`` is for the worker's assignment only.
Errors name keys and ids, never values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vivace.protocol import ids
from vivace.protocol import objects as names
from vivace.protocol import secrets as rules
from vivace.server.errors import Conflict, Gone, Invalid, NotFound
from vivace.server.secretbox import SealedValueError, SecretBox
from vivace.server.store.base import Tx


class SecretUnavailable(NotFound):
    """A secret a function names was deleted, or does not open under this server's key."""

    def __init__(self, secret_id: str, why: str) -> None:
        super().__init__(f"secret {secret_id} {why}", code="secret_unavailable")
        self.secret_id = secret_id


def _encode(env: Any) -> bytes:
    problem = rules.env_problem(env)
    if problem:
        raise Invalid(problem, code="invalid_secret")
    return json.dumps(env, sort_keys=True, separators=(",", ":")).encode()


def _write(tx: Tx, box: SecretBox, oid: str, plain: bytes, app_id: str | None, digest: str | None) -> None:
    tx.execute(
        "INSERT INTO secrets (object_id, app_id, digest, sealed, created_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (object_id) DO UPDATE SET sealed = excluded.sealed, digest = excluded.digest, "
        "created_at = excluded.created_at",
        (oid, app_id, digest, box.seal(plain, oid), tx.now),
    )


def create(tx: Tx, box: SecretBox, name: str, env: Any, overwrite: bool = False) -> tuple[str, bool]:
    """Store a named secret; ``(id, created)``. An existing name is a conflict unless ``overwrite``."""
    problem = names.name_problem(name)
    if problem:
        raise Invalid(problem, code="invalid_name")
    plain = _encode(env)
    oid = ids.new_id(ids.SECRET)
    added = tx.execute(
        "INSERT INTO objects (id, kind, name, created_at) VALUES (?, 'secret', ?, ?) "
        "ON CONFLICT (kind, name) DO NOTHING",
        (oid, name, tx.now),
    )
    if not added:
        if not overwrite:
            raise Conflict(
                f"secret {name!r} already exists (pass overwrite / --force)", code="already_exists"
            )
        oid = str(tx.scalar("SELECT id FROM objects WHERE kind = 'secret' AND name = ?", (name,)))
    _write(tx, box, oid, plain, None, None)
    return oid, bool(added)


def create_inline(tx: Tx, box: SecretBox, app_id: str, env: Any) -> str:
    """The id of an inline secret of ``app_id`` holding ``env``: the app's existing one with the same
    values, or a new one."""
    plain = _encode(env)
    state = tx.scalar("SELECT state FROM apps WHERE id = ?", (app_id,))
    if state is None:
        raise NotFound(f"app {app_id} not found")
    if state == "stopped":
        raise Gone(f"app {app_id} has stopped", code="app_stopped")
    digest = box.digest(plain)
    found = tx.scalar(
        "SELECT object_id FROM secrets WHERE app_id = ? AND digest = ? ORDER BY object_id LIMIT 1",
        (app_id, digest),
    )
    if found is not None:
        return str(found)
    oid = ids.new_id(ids.SECRET)
    tx.execute(
        "INSERT INTO objects (id, kind, name, created_at, heartbeat_at) VALUES (?, 'secret', NULL, ?, NULL)",
        (oid, tx.now),
    )
    _write(tx, box, oid, plain, app_id, digest)
    return oid


def _open(tx: Tx, box: SecretBox, oid: str) -> dict[str, str]:
    sealed = tx.scalar("SELECT sealed FROM secrets WHERE object_id = ?", (oid,))
    if sealed is None:
        raise SecretUnavailable(oid, "was deleted")
    try:
        env: dict[str, str] = json.loads(box.open(bytes(sealed), oid))
    except SealedValueError:
        raise SecretUnavailable(oid, "does not open under this server's secret key") from None
    return env


def lookup(tx: Tx, box: SecretBox, name: str, required_keys: Sequence[str] = ()) -> str:
    """The id of the secret named ``name``; ``NotFound`` naming the ``required_keys`` it lacks."""
    problem = names.name_problem(name)
    if problem:
        raise Invalid(problem, code="invalid_name")
    bad = [k for k in required_keys if rules.key_problem(k)]
    if bad:
        raise Invalid(rules.key_problem(bad[0]) or "invalid key", code="invalid_secret")
    found = tx.scalar("SELECT id FROM objects WHERE kind = 'secret' AND name = ?", (name,))
    if found is None:
        raise NotFound(f"secret {name!r} not found (create it with `vivace secret create {name} KEY=VALUE`)")
    oid = str(found)
    if required_keys:
        missing = rules.missing_keys(_open(tx, box, oid), required_keys)
        if missing:
            raise NotFound(f"secret {name!r} is missing key(s): {', '.join(missing)}", code="missing_keys")
    return oid


def env_for(tx: Tx, box: SecretBox, secret_ids: Sequence[str]) -> dict[str, str]:
    """The variables of ``secret_ids`` merged in order (a later secret's key wins)."""
    env: dict[str, str] = {}
    for oid in secret_ids:
        env.update(_open(tx, box, oid))
    return env


def collect_inline(tx: Tx) -> list[str]:
    """Delete the inline secrets of apps that have stopped (or are gone)."""
    gone = [
        str(r[0])
        for r in tx.fetchall(
            "SELECT s.object_id FROM secrets s LEFT JOIN apps a ON a.id = s.app_id "
            "WHERE s.app_id IS NOT NULL AND (a.id IS NULL OR a.state = 'stopped')"
        )
    ]
    for oid in gone:
        tx.execute("DELETE FROM secrets WHERE object_id = ?", (oid,))
        tx.execute("DELETE FROM objects WHERE id = ? AND name IS NULL", (oid,))
    return gone


def attach_envs(
    tx: Tx, box: SecretBox, worker_id: str, starts: list[Any]
) -> tuple[dict[str, dict[str, str]], set[str]]:
    """The variables of each container to start (``workers.Assignment``) whose function names secrets.

    A container whose secret was deleted (or does not open) is not started: it leaves ``starts``, stops
    with the reason (shown in its app's logs, and counted as a failed start) and its inputs go back to
    the queue. Returns the variables by container id, and the calls whose inputs were requeued.
    """
    from vivace.server.services import logs, workers

    envs: dict[str, dict[str, str]] = {}
    touched: set[str] = set()
    for a in list(starts):
        wanted = a.spec.get("secrets") or []
        if not wanted:
            continue
        try:
            envs[a.container_id] = env_for(tx, box, wanted)
        except SecretUnavailable as err:
            starts.remove(a)
            reason = f"failed to start: {err.message}"
            line = {"app_id": a.app_id, "function_id": a.function_id, "container_id": a.container_id}
            logs.append(tx, [{**line, "stream": "system", "line": f"container {reason}"}])
            touched |= workers.container_event(
                tx, worker_id, workers.ContainerEvent(a.container_id, "exited", None, reason)
            )
    return envs, touched


def build_envs(
    tx: Tx, box: SecretBox, steps: list[dict[str, Any]], layers: list[dict[str, Any]]
) -> dict[str, dict[str, str]]:
    """The variables of each step still to build that names secrets, by step index (a string): what a
    worker taking the build gets, for that build only. Raises ``NotFound`` naming the step whose secret
    is gone."""
    from vivace.protocol.images import step_secrets

    envs: dict[str, dict[str, str]] = {}
    for i, (step, layer) in enumerate(zip(steps, layers, strict=True)):
        names = step_secrets(step)
        if not names or layer.get("digest"):
            continue
        env: dict[str, str] = {}
        for name in names:
            oid = tx.scalar("SELECT id FROM objects WHERE kind = 'secret' AND name = ?", (name,))
            if oid is None:
                raise NotFound(f"step {i + 1} ({step['kind']}) needs secret {name!r}, which does not exist")
            env.update(_open(tx, box, str(oid)))
        envs[str(i)] = env
    return envs
