"""Contract: web endpoint routes on SQLite and Postgres: each endpoint's host, a clash between deployed
apps refused, a deployed app served before a dev one, the newest dev one winning, stopped apps gone."""

from __future__ import annotations

from typing import Any

import pytest

from vivace.protocol.functions import FunctionSpec
from vivace.server.errors import Conflict, NotFound
from vivace.server.services import apps
from vivace.server.services import web as svc


def _register(h: Any, app_id: str, name: str, label: str | None = None, **extra: Any) -> str:
    web = {"kind": "asgi", "label": label}
    spec = FunctionSpec.from_dict({"name": name, "module": "m", "qualname": name, "web": web, **extra})
    fid, _ = h.w(lambda tx: apps.register_function(tx, app_id, spec, None))
    return str(fid)


def _app(h: Any, name: str | None, state: str) -> str:
    return str(h.w(lambda tx: apps.create_app(tx, name, state, "test"))["app_id"])


def test_routes_follow_registration_and_apps(h: Any) -> None:
    shop = _app(h, "shop", "deployed")
    fid = _register(h, shop, "api_v1")
    assert h.w(lambda tx: svc.hosts_of(tx, fid)) == {"": "shop-api-v1"}
    assert h.w(lambda tx: svc.find(tx, "shop-api-v1")).function_id == fid
    # a redeploy with a label moves the endpoint to its new host
    assert _register(h, shop, "api_v1", label="api") == fid
    with pytest.raises(NotFound):
        h.w(lambda tx: svc.find(tx, "shop-api-v1"))
    assert h.w(lambda tx: svc.find(tx, "shop-api")).function_id == fid
    # another deployed app cannot take a host a deployed one serves: shop + "api-x" = shop-api + "x"
    _register(h, shop, "second", label="api-x")
    other = _app(h, "shop-api", "deployed")
    with pytest.raises(Conflict, match="already served by second of deployed app 'shop'"):
        _register(h, other, "x")
    assert h.w(lambda tx: svc.find(tx, "shop-api-x")).spec.name == "second"
    # dev runs get -dev names; the newest live one answers, a stopped one no longer does
    first = _register(h, _app(h, "shop", "ephemeral"), "api_v1", label="api")
    second_app = _app(h, "shop", "ephemeral")
    second = _register(h, second_app, "api_v1", label="api")
    assert h.w(lambda tx: svc.find(tx, "shop-api-dev")).function_id == second
    h.w(lambda tx: apps.stop_app(tx, second_app, "test"))
    assert h.w(lambda tx: svc.find(tx, "shop-api-dev")).function_id == first
    assert h.w(lambda tx: svc.hosts_of(tx, second)) == {}  # a stopped app's routes are gone
    assert h.w(lambda tx: svc.find(tx, "shop-api")).function_id == fid  # the deployed one is untouched


def test_class_methods_get_hosts_of_their_own(h: Any) -> None:
    app_id = _app(h, "zoo", "deployed")
    methods = {
        "predict": {"is_generator": False, "web": {"kind": "fastapi"}},
        "health": {"is_generator": False, "web": {"kind": "fastapi", "label": "zoo-ok"}},
        "plain": {"is_generator": False},
    }
    spec = FunctionSpec.from_dict(
        {"name": "Model", "module": "m", "qualname": "Model", "is_class": True, "methods": methods}
    )
    fid, _ = h.w(lambda tx: apps.register_function(tx, app_id, spec, None))
    assert h.w(lambda tx: svc.hosts_of(tx, fid)) == {"predict": "zoo-model-predict", "health": "zoo-zoo-ok"}
    route = h.w(lambda tx: svc.find(tx, "zoo-model-predict"))
    assert (route.method, route.web["kind"]) == ("predict", "fastapi")


def test_websocket_messages_are_read_in_order_after_a_sequence_and_dropped_with_the_session(h: Any) -> None:
    assert [h.w(lambda tx, d=d: svc.put_message(tx, "fc-1", d)) for d in (b"a", b"b", b"c")] == [1, 2, 3]
    h.w(lambda tx: svc.put_message(tx, "fc-2", b"other"))
    assert h.w(lambda tx: svc.messages(tx, "fc-1", 0)) == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert h.w(lambda tx: svc.messages(tx, "fc-1", 2)) == [(3, b"c")]
    h.w(lambda tx: svc.drop_messages(tx, "fc-1"))
    assert h.w(lambda tx: svc.messages(tx, "fc-1", 0)) == []
    assert h.w(lambda tx: svc.messages(tx, "fc-2", 0)) == [(1, b"other")]
