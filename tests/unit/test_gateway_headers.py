"""What the gateway forwards to a web endpoint's app: never the proxy token nor the dashboard's session."""

from vivace.server.api.gateway import _forwarded


def test_the_proxy_token_and_the_dashboard_session_never_reach_the_app() -> None:
    got = _forwarded([
        ("Host", "example"), ("Modal-Key", "tk-1"), ("modal-secret", "ts-2"),
        ("Cookie", "theme=dark; vivace_session=tk-9:ts-secret; cart=3"), ("Accept", "*/*"),
    ])  # fmt: skip
    assert got == [("Host", "example"), ("Cookie", "theme=dark; cart=3"), ("Accept", "*/*")]
    assert _forwarded([("cookie", "vivace_session=tk-9:ts-secret")]) == []
    assert _forwarded([("cookie", "vivace_sessionx=1")]) == [("cookie", "vivace_sessionx=1")]
