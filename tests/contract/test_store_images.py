"""Contract: image builds are registered once, leased to one worker at a time, and reuse layers."""

from __future__ import annotations

from typing import Any

import pytest

from vivace.protocol import images as proto
from vivace.server.errors import Conflict, NotFound
from vivace.server.services import images

BASE = {"kind": "debian_slim", "python_version": "3.11"}
GIT = {"kind": "apt_install", "packages": ["git"]}
SIX = {"kind": "pip_install", "packages": ["six"]}


def test_one_build_per_image_and_layers_shared_by_prefix(h: Any) -> None:
    first = h.w(lambda tx: images.register(tx, [BASE, GIT]))
    again = h.w(lambda tx: images.register(tx, [BASE, GIT]))
    assert first.id == again.id == proto.image_id([BASE, GIT]) and first.state == "pending"
    assert h.w(lambda tx: images.take_build(tx, "wk-a")) == first.id
    assert h.w(lambda tx: images.take_build(tx, "wk-b")) is None  # leased: nobody else builds it
    keys = proto.layer_keys([BASE, GIT])
    for key in keys:
        h.w(lambda tx, k=key: images.add_layer(tx, first.id, "wk-a", k, "a" * 64, 10))
    with pytest.raises(Conflict):  # only the builder reports
        h.w(lambda tx: images.add_layer(tx, first.id, "wk-b", keys[0], "b" * 64, 1))
    h.w(lambda tx: images.add_logs(tx, first.id, "wk-a", ["step 1", "step 2"]))
    h.w(lambda tx: images.finish(tx, first.id, "wk-a", None))
    done = h.w(lambda tx: images.get(tx, first.id))
    assert done.state == "ready" and [layer["digest"] for layer in done.layers] == ["a" * 64] * 2
    assert [line["line"] for line in h.w(lambda tx: images.read_logs(tx, first.id, 0))] == [
        "step 1",
        "step 2",
    ]
    # an image sharing the prefix only builds its last layer; an equal chain is ready at once
    longer = h.w(lambda tx: images.register(tx, [BASE, GIT, SIX]))
    assert [bool(layer["digest"]) for layer in longer.layers] == [True, True, False]
    assert h.w(lambda tx: images.register(tx, [BASE, GIT])).state == "ready"


def test_a_silent_builder_loses_its_lease_and_failed_builds_are_retried(h: Any) -> None:
    info = h.w(lambda tx: images.register(tx, [BASE]))
    assert h.w(lambda tx: images.take_build(tx, "wk-a")) == info.id
    h.w(lambda tx: tx.execute("UPDATE images SET build_deadline = 0 WHERE id = ?", (info.id,)))
    assert h.w(lambda tx: images.take_build(tx, "wk-b")) == info.id  # the lease lapsed
    with pytest.raises(Conflict):
        h.w(lambda tx: images.finish(tx, info.id, "wk-a", None))
    with pytest.raises(Conflict, match="lacks"):
        h.w(lambda tx: images.finish(tx, info.id, "wk-b", None))
    h.w(lambda tx: images.finish(tx, info.id, "wk-b", "step 1 failed: exit 100"))
    assert h.w(lambda tx: images.get(tx, info.id)).state == "failed"
    assert h.w(lambda tx: images.register(tx, [BASE])).state == "pending"  # asked again: rebuilt
    with pytest.raises(Conflict, match="being built"):
        h.w(lambda tx: images.take_build(tx, "wk-c") and images.delete(tx, info.id))
    with pytest.raises(NotFound):
        h.w(lambda tx: images.get(tx, "im-nope"))


def test_a_layer_keeps_what_it_sets_besides_files(h: Any) -> None:
    pulled = {"kind": "from_registry", "reference": "127.0.0.1:5000/app:1"}
    info = h.w(lambda tx: images.register(tx, [pulled]))
    h.w(lambda tx: images.take_build(tx, "wk-a"))
    config = {
        "env": {"PATH": "/usr/local/bin:/usr/bin"},
        "workdir": "/app",
        "python": "/usr/local/bin/python3",
    }
    key = proto.layer_keys([pulled])[0]
    h.w(lambda tx: images.add_layer(tx, info.id, "wk-a", key, "c" * 64, 5, config))
    assert h.w(lambda tx: images.get(tx, info.id)).layers == [
        {"key": key, "digest": "c" * 64, "size": 5, "config": config}
    ]


def _build(h: Any, steps: list[dict[str, Any]], digest: str) -> str:
    info = h.w(lambda tx: images.register(tx, steps))
    h.w(lambda tx: images.take_build(tx, "wk-a"))
    for key in proto.layer_keys(steps):
        h.w(lambda tx, k=key: images.add_layer(tx, info.id, "wk-a", k, digest, 1))
    h.w(lambda tx: images.finish(tx, info.id, "wk-a", None))
    return str(info.id)


def test_unused_images_and_the_layers_only_they_used_are_collected(h: Any) -> None:
    old = _build(h, [BASE, GIT], "1" * 64)
    named = _build(h, [BASE, SIX], "2" * 64)  # shares the base layer with `old`
    h.function("uses_it", image_id=named)  # a function of a running app names it
    h.w(lambda tx: tx.execute("UPDATE images SET used_at = 0"))
    h.w(lambda tx: tx.execute("UPDATE layers SET created_at = 0"))
    assert h.w(lambda tx: images.collect(tx)) == []  # every layer's digest is still used by a kept one
    assert [r[0] for r in h.sql("SELECT id FROM images")] == [named] != [old]
    git_key = proto.layer_keys([BASE, GIT])[1]
    assert h.sql("SELECT key FROM layers WHERE key = ?", (git_key,)) == []  # only `old` had it
    # the blobs go once nothing names them (the shared base kept the first digest stored for it)
    h.w(lambda tx: tx.execute("UPDATE apps SET state = 'stopped'"))
    h.w(lambda tx: tx.execute("UPDATE images SET used_at = 0"))
    assert h.w(lambda tx: images.collect(tx)) == ["1" * 64, "2" * 64]
    assert h.sql("SELECT key FROM layers") == [] and h.sql("SELECT id FROM images") == []


def test_recent_images_and_layers_stay(h: Any) -> None:
    kept = _build(h, [BASE, GIT], "3" * 64)
    assert h.w(lambda tx: images.collect(tx)) == []
    assert [r[0] for r in h.sql("SELECT id FROM images")] == [kept]
    assert len(h.sql("SELECT key FROM layers")) == 2
