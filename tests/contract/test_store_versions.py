"""Contract: deploy versions (record, history, rollback) on SQLite and Postgres."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vivace.protocol.functions import FunctionSpec
from vivace.server.errors import Conflict, Invalid, NotFound
from vivace.server.services import apps, images
from vivace.server.services import versions as svc


def _deploy(h: Any, app_id: str, funcs: dict[str, tuple[bytes | None, int]]) -> int:
    """Register ``name -> (definition, timeout)`` and record the deploy; returns the version."""
    ids = []
    for name, (definition, timeout) in funcs.items():
        spec = FunctionSpec(
            name=name, module="m", qualname=name, timeout=timeout, serialized=definition is not None
        )
        fid, _ = h.w(lambda tx, spec=spec, d=definition: apps.register_function(tx, app_id, spec, d))
        ids.append(fid)
    return int(h.w(lambda tx: svc.record(tx, app_id, ids))["version"])


def _active(h: Any, app_id: str) -> dict[str, tuple[int, bytes | None]]:
    rows = h.sql("SELECT name, spec, definition FROM functions WHERE app_id = ? AND active = 1", (app_id,))
    return {n: (json.loads(s)["timeout"], None if d is None else bytes(d)) for n, s, d in rows}


def test_versions_record_retire_and_roll_back(h: Any) -> None:
    app_id = h.w(lambda tx: apps.create_app(tx, "svc", "deployed", "test"))["app_id"]
    assert _deploy(h, app_id, {"a": (b"a-one", 10), "b": (None, 20)}) == 1
    assert _deploy(h, app_id, {"a": (b"a-two", 11)}) == 2  # b is gone from the code
    assert _active(h, app_id) == {"a": (11, b"a-two")}
    hist = h.w(lambda tx: svc.history(tx, app_id))
    assert [(v["version"], v["functions"]) for v in hist] == [(2, ["a"]), (1, ["a", "b"])]
    out = h.w(lambda tx: svc.rollback(tx, app_id, None))  # the one before the current
    assert (out["version"], out["rolled_back_to"]) == (3, 1)
    assert _active(h, app_id) == {"a": (10, b"a-one"), "b": (20, None)}
    assert h.w(lambda tx: svc.history(tx, app_id))[0]["note"] == "rollback to version 1"
    out = h.w(lambda tx: svc.rollback(tx, app_id, 2))
    assert _active(h, app_id) == {"a": (11, b"a-two")}
    with pytest.raises(Conflict, match="current"):
        h.w(lambda tx: svc.rollback(tx, app_id, out["version"]))
    with pytest.raises(NotFound, match="no version 99"):
        h.w(lambda tx: svc.rollback(tx, app_id, 99))


def test_only_deployed_apps_with_versions_roll_back(h: Any) -> None:
    eph = h.w(lambda tx: apps.create_app(tx, None, "ephemeral", "test"))["app_id"]
    with pytest.raises(Conflict, match="only deployed"):
        h.w(lambda tx: svc.record(tx, eph, []))
    fresh = h.w(lambda tx: apps.create_app(tx, "fresh", "deployed", "test"))["app_id"]
    with pytest.raises(Conflict, match="no recorded deploys"):
        h.w(lambda tx: svc.rollback(tx, fresh, None))
    with pytest.raises(Invalid, match="not active functions"):
        h.w(lambda tx: svc.record(tx, fresh, ["fu-nope"]))
    _deploy(h, fresh, {"a": (None, 10)})
    with pytest.raises(NotFound, match="no version 0"):
        h.w(lambda tx: svc.rollback(tx, fresh, None))  # one version: nothing before it


def test_history_is_bounded_and_old_versions_images_are_kept(h: Any) -> None:
    app_id = h.w(lambda tx: apps.create_app(tx, "many", "deployed", "test"))["app_id"]
    for i in range(svc.VERSIONS_KEPT + 3):
        _deploy(h, app_id, {"a": (None, 10 + i)})
    kept = [v["version"] for v in h.w(lambda tx: svc.history(tx, app_id))]
    assert kept == list(range(svc.VERSIONS_KEPT + 3, 3, -1))
    # an image only an old version names survives collection (a rollback would start it)
    image_id = "im-" + "a" * 32
    spec = FunctionSpec(name="img", module="m", qualname="img", image_id=image_id)

    def setup(tx: Any) -> None:
        tx.execute(
            "INSERT INTO images (id, steps, state, created_at, used_at) VALUES (?, '[]', 'ready', 0, 0)",
            (image_id,),
        )

    h.w(setup)
    fid, _ = h.w(lambda tx: apps.register_function(tx, app_id, spec, None))
    h.w(lambda tx: svc.record(tx, app_id, [fid]))
    plain = FunctionSpec(name="img", module="m", qualname="img")  # redeployed without the image
    fid, _ = h.w(lambda tx: apps.register_function(tx, app_id, plain, None))
    h.w(lambda tx: svc.record(tx, app_id, [fid]))
    h.w(lambda tx: images.collect(tx, image_ttl=0, layer_grace=0))
    assert h.one("SELECT COUNT(*) FROM images WHERE id = ?", (image_id,)) == 1
    h.w(lambda tx: tx.execute("DELETE FROM app_versions WHERE app_id = ?", (app_id,)))
    h.w(lambda tx: images.collect(tx, image_ttl=0, layer_grace=0))
    assert h.one("SELECT COUNT(*) FROM images WHERE id = ?", (image_id,)) == 0  # only versions kept it
