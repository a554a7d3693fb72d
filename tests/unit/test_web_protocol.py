"""Web endpoint settings, host names, the gateway's host parsing, and the request/response frames."""

from __future__ import annotations

import pytest

import vivace
from vivace.exception import InvalidError
from vivace.protocol import frames
from vivace.protocol import web as proto
from vivace.protocol.functions import FunctionSpec, SpecError
from vivace.server.api.gateway import host_of


def test_settings_get_defaults_and_bad_ones_name_the_problem() -> None:
    assert proto.check_web({"kind": "fastapi"}) == {
        "kind": "fastapi", "label": None, "docs": False, "requires_proxy_auth": False, "method": "GET",
    }  # fmt: skip
    assert proto.check_web({"kind": "server", "port": 80})["startup_timeout"] == 5.0
    bad = [
        ({"kind": "flask"}, "web kind"),
        ({"kind": "fastapi", "method": "BREW"}, "method must be"),
        ({"kind": "asgi", "method": "GET"}, "fastapi_endpoint only"),
        ({"kind": "server"}, "port"),
        ({"kind": "server", "port": 70000}, "port"),
        ({"kind": "server", "port": 8000, "startup_timeout": 0}, "startup_timeout"),
        ({"kind": "wsgi", "port": 8000}, "web_server only"),
        ({"kind": "asgi", "label": "Has_Upper"}, "lowercase"),
        ({"kind": "asgi", "label": "-lead"}, "lowercase"),
        ({"kind": "asgi", "docs": "yes"}, "docs must be"),
        ({"kind": "asgi", "extra": 1}, "unknown web endpoint settings"),
    ]
    for raw, words in bad:
        with pytest.raises(proto.WebSpecError, match=words):
            proto.check_web(raw)


def test_a_spec_with_a_bad_web_field_is_a_spec_error() -> None:
    base = {"name": "f", "module": "m", "qualname": "f"}
    assert FunctionSpec.from_dict({**base, "web": {"kind": "asgi"}}).web == proto.check_web({"kind": "asgi"})
    with pytest.raises(SpecError, match="web kind"):
        FunctionSpec.from_dict({**base, "web": {"kind": "nope"}})
    with pytest.raises(SpecError, match="cannot be a class, a generator"):
        FunctionSpec.from_dict({**base, "web": {"kind": "asgi"}, "is_generator": True})


def test_host_labels_are_one_dns_label_and_stay_unique_when_cut() -> None:
    assert proto.host_label("My_App", "do_thing", None, dev=False) == "my-app-do-thing"
    assert proto.host_label("app", "f", "api", dev=True) == "app-api-dev"
    long_a = proto.host_label("a" * 60, "first_function", None, dev=False)
    long_b = proto.host_label("a" * 60, "second_function", None, dev=False)
    assert len(long_a) <= 63 and len(long_b) <= 63 and long_a != long_b
    assert proto.LABEL.fullmatch(long_a)


def test_the_gateway_takes_the_label_left_of_its_domain() -> None:
    assert host_of("app-f.vivace.test", "vivace.test") == "app-f"
    assert host_of("APP-F.vivace.test:8700", "vivace.test:8700") == "app-f"
    assert host_of("vivace.test", "vivace.test") is None
    assert host_of("a.b.vivace.test", "vivace.test") is None  # one label only
    assert host_of("app-f.other.test", "vivace.test") is None
    assert host_of("127.0.0.1:8700", "vivace.test") is None


def test_requests_and_pieces_round_trip_and_are_told_from_pickles() -> None:
    payload = proto.encode_request(
        "POST", "/x", b"a=1", [("content-type", "text/plain")], b"body", client=("1.2.3.4", 5), call="m"
    )
    assert proto.is_request(payload) and not proto.is_request(b"\x80\x05...")
    head, body = proto.decode_request(payload)
    assert (head["method"], head["path"], head["query"], head["call"], body) == (
        "POST",
        "/x",
        "a=1",
        "m",
        b"body",
    )
    assert proto.decode_piece(proto.encode_piece(b"hi", 201, [["x-a", "1"]])) == (201, [("x-a", "1")], b"hi")
    assert proto.decode_piece(proto.encode_piece(b"more")) == (None, [], b"more")
    with pytest.raises(frames.FrameError, match="100-599"):
        proto.decode_piece(frames.encode({"status": 42, "headers": []}, [b""]))
    with pytest.raises(frames.FrameError, match="string pairs"):
        proto.decode_piece(frames.encode({"status": 200, "headers": [["a"]]}, [b""]))


def test_decorators_refuse_bad_use_with_a_clear_error() -> None:
    with pytest.raises(InvalidError, match="parentheses"):
        vivace.fastapi_endpoint(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="method must be"):
        vivace.fastapi_endpoint(method="FETCH")
    with pytest.raises(InvalidError, match="port"):
        vivace.web_server(0)
    with pytest.raises(InvalidError, match="generator"):

        @vivace.asgi_app()
        def gen():  # type: ignore[no-untyped-def]
            yield 1

    app = vivace.App("webunit")
    with pytest.raises(InvalidError, match=r"before @app\.function"):
        vivace.fastapi_endpoint()(app.function(serialized=True)(lambda: 1))
    with pytest.raises(InvalidError, match="cannot be a generator, scheduled or batched"):

        @app.function(schedule=vivace.Period(minutes=1))
        @vivace.fastapi_endpoint()
        def ticking() -> None: ...
