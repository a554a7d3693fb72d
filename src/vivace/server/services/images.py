"""Images and their layers: register a chain, lease its build to one worker, record built layers.

Exactly-once building rests on rows, not on memory: one ``images`` row per image id (a chain's
content hash) and one ``layers`` row per layer key. A worker takes a build by setting ``builder`` and
``build_deadline`` on a ``pending`` row (or one whose lease lapsed), extends the lease while it works,
and records each layer it stored; a second build of an equal chain finds the layers and builds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vivace.protocol import images as proto
from vivace.server.errors import Conflict, NotFound
from vivace.server.store.base import Tx

BUILD_LEASE = 60.0  # seconds a builder may go without reporting before another worker takes over
MAX_LOG_LINE = 8192


@dataclass
class ImageInfo:
    id: str
    steps: list[dict[str, Any]]
    state: str  # pending | building | ready | failed
    error: str | None
    layers: list[dict[str, Any]]  # per step: {"key", "digest" or None, "size"}


def register(tx: Tx, steps: list[dict[str, Any]]) -> ImageInfo:
    """Create the image if new (``ready`` at once when every layer exists); a failed one is retried."""
    image_id = proto.image_id(steps)
    row = tx.fetchone("SELECT state FROM images WHERE id = ?", (image_id,))
    if row is None:
        tx.execute(
            "INSERT INTO images (id, steps, state, created_at, used_at) VALUES (?, ?, 'pending', ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (image_id, proto.canonical(steps), tx.now, tx.now),
        )
    elif row[0] == "failed":  # asked again: build again (the cause may be gone)
        tx.execute(
            "UPDATE images SET state = 'pending', error = NULL, builder = NULL WHERE id = ? AND state = 'failed'",
            (image_id,),
        )
    else:
        tx.execute("UPDATE images SET used_at = ? WHERE id = ?", (tx.now, image_id))
    info = get(tx, image_id)
    if info.state == "pending" and all(layer["digest"] for layer in info.layers):
        tx.execute("UPDATE images SET state = 'ready', built_at = ? WHERE id = ?", (tx.now, image_id))
        info.state = "ready"
    return info


def get(tx: Tx, image_id: str) -> ImageInfo:
    row = tx.fetchone("SELECT steps, state, error FROM images WHERE id = ?", (image_id,))
    if row is None:
        raise NotFound(f"image {image_id} does not exist")
    steps = json.loads(row[0])
    keys = proto.layer_keys(steps)
    marks, vals = tx.in_list(keys)
    found = {
        r[0]: {"key": r[0], "digest": r[1], "size": int(r[2]), "config": json.loads(r[3]) if r[3] else None}
        for r in tx.fetchall(f"SELECT key, digest, size, config FROM layers WHERE key IN {marks}", vals)
    }
    layers = [found.get(k) or {"key": k, "digest": None, "size": 0, "config": None} for k in keys]
    return ImageInfo(image_id, steps, str(row[1]), row[2], layers)


def take_build(tx: Tx, worker_id: str) -> str | None:
    """Lease the oldest image waiting for a builder (or whose builder went silent) to this worker."""
    row = tx.fetchone(
        "SELECT id FROM images WHERE state = 'pending' OR (state = 'building' AND build_deadline < ?) "
        "ORDER BY created_at LIMIT 1",
        (tx.now,),
    )
    if row is None:
        return None
    taken = tx.execute(
        "UPDATE images SET state = 'building', builder = ?, build_deadline = ? WHERE id = ? AND "
        "(state = 'pending' OR (state = 'building' AND build_deadline < ?))",
        (worker_id, tx.now + BUILD_LEASE, row[0], tx.now),
    )
    return str(row[0]) if taken else None


def _check_builder(tx: Tx, image_id: str, worker_id: str) -> None:
    row = tx.fetchone("SELECT state, builder FROM images WHERE id = ?", (image_id,))
    if row is None:
        raise NotFound(f"image {image_id} does not exist")
    if row[0] != "building" or row[1] != worker_id:
        raise Conflict(f"worker {worker_id} does not hold the build of image {image_id}")
    tx.execute("UPDATE images SET build_deadline = ? WHERE id = ?", (tx.now + BUILD_LEASE, image_id))


def add_layer(
    tx: Tx,
    image_id: str,
    worker_id: str,
    key: str,
    digest: str,
    size: int,
    config: dict[str, Any] | None = None,
) -> None:
    """Record a built layer (idempotent: the first digest stored for a key stays)."""
    _check_builder(tx, image_id, worker_id)
    if key not in proto.layer_keys(get(tx, image_id).steps):
        raise Conflict(f"layer {key} is not part of image {image_id}")
    tx.execute(
        "INSERT INTO layers (key, digest, size, created_at, config) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (key) DO NOTHING",
        (key, digest, size, tx.now, proto.canonical(config) if config else None),
    )


def add_logs(tx: Tx, image_id: str, worker_id: str, lines: list[str]) -> None:
    _check_builder(tx, image_id, worker_id)
    for line in lines:
        tx.execute(
            "INSERT INTO build_logs (image_id, ts, line) VALUES (?, ?, ?)",
            (image_id, tx.now, line[:MAX_LOG_LINE]),
        )


def finish(tx: Tx, image_id: str, worker_id: str, error: str | None) -> None:
    _check_builder(tx, image_id, worker_id)
    if error is None:
        info = get(tx, image_id)
        missing = [layer["key"] for layer in info.layers if not layer["digest"]]
        if missing:
            raise Conflict(f"image {image_id} still lacks {len(missing)} layer(s)")
        tx.execute(
            "UPDATE images SET state = 'ready', built_at = ?, builder = NULL WHERE id = ?", (tx.now, image_id)
        )
    else:
        tx.execute(
            "UPDATE images SET state = 'failed', error = ?, builder = NULL WHERE id = ?",
            (error[: MAX_LOG_LINE * 4], image_id),
        )


def read_logs(tx: Tx, image_id: str, cursor: int, limit: int = 1000) -> list[dict[str, Any]]:
    rows = tx.fetchall(
        "SELECT id, ts, line FROM build_logs WHERE image_id = ? AND id > ? ORDER BY id LIMIT ?",
        (image_id, cursor, limit),
    )
    return [{"id": int(r[0]), "ts": float(r[1]), "line": r[2]} for r in rows]


def list_images(tx: Tx, limit: int = 200) -> list[dict[str, Any]]:
    rows = tx.fetchall(
        "SELECT id, state, created_at, built_at, used_at, steps FROM images ORDER BY used_at DESC LIMIT ?",
        (limit,),
    )
    out = []
    for image_id, state, created, built, used, steps in rows:
        chain = json.loads(steps)
        out.append(
            {
                "image_id": image_id,
                "state": state,
                "created_at": created,
                "built_at": built,
                "used_at": used,
                "base": proto.canonical(chain[0]),
                "steps": len(chain),
            }
        )
    return out


def delete(tx: Tx, image_id: str) -> None:
    """Forget an image (its layers stay while other images use them; unused ones are collected later)."""
    if not tx.execute("DELETE FROM images WHERE id = ? AND state <> 'building'", (image_id,)):
        get(tx, image_id)  # NotFound if it does not exist
        raise Conflict(f"image {image_id} is being built; delete it when the build ends")
    tx.execute("DELETE FROM build_logs WHERE image_id = ?", (image_id,))


IMAGE_TTL = 30 * 86400.0  # an image nobody built, registered or started for this long is forgotten
LAYER_GRACE = 3600.0  # a layer no image names is kept this long (a build may be about to name it)


def collect(tx: Tx, image_ttl: float = IMAGE_TTL, layer_grace: float = LAYER_GRACE) -> list[str]:
    """Forget images unused for ``image_ttl`` seconds that no function of a running or deployed app
    names (nor a kept version of one), then layers no image names any more (older than ``layer_grace``). Returns the blob digests
    that only those layers used, for the caller to delete from the blob store."""
    named: set[str] = set()
    for (spec,) in tx.fetchall(
        "SELECT f.spec FROM functions f JOIN apps a ON a.id = f.app_id WHERE a.state <> 'stopped'"
    ):
        image_id = json.loads(spec).get("image_id")
        if image_id:
            named.add(image_id)
    from vivace.server.services.versions import image_ids_kept

    named |= image_ids_kept(tx)  # what a rollback would start again
    for image_id, used_at in tx.fetchall("SELECT id, used_at FROM images WHERE state <> 'building'"):
        if image_id not in named and used_at < tx.now - image_ttl:
            tx.execute("DELETE FROM images WHERE id = ? AND state <> 'building'", (image_id,))
            tx.execute("DELETE FROM build_logs WHERE image_id = ?", (image_id,))
    kept: set[str] = set()
    referenced: set[str] = set()  # blobs the remaining images' steps name (local files, functions)
    for (steps,) in tx.fetchall("SELECT steps FROM images"):
        chain = json.loads(steps)
        kept.update(proto.layer_keys(chain))
        referenced.update(s["digest"] for s in chain if "digest" in s)
    doomed = [
        (key, digest)
        for key, digest in tx.fetchall(
            "SELECT key, digest FROM layers WHERE created_at < ?", (tx.now - layer_grace,)
        )
        if key not in kept
    ]
    for key, _ in doomed:
        tx.execute("DELETE FROM layers WHERE key = ?", (key,))
    still = {d for (d,) in tx.fetchall("SELECT digest FROM layers")}
    return sorted({digest for _, digest in doomed} - still - referenced)
