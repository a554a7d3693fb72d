"""Web endpoint decorators: ``@fastapi_endpoint``, ``@asgi_app``, ``@wsgi_app``, ``@web_server``.

Each marks the function (or a method of an ``@app.cls`` class) with its settings; ``@app.function()``
and ``@app.cls()`` put them in the spec, and the control plane then serves the endpoint at a URL
(``Function.get_web_url()``). Requests become the function's inputs: they wait for a container at
zero, scale it like calls do (``@concurrent`` lets one container serve several at once) and time out
with the function's ``timeout``.

- ``fastapi_endpoint``: the function answers one method at ``/``; its parameters are query parameters
  or, typed as a pydantic model or ``dict``, the JSON body. The image needs ``fastapi``.
- ``asgi_app`` / ``wsgi_app``: the function returns an app (FastAPI, Starlette, Flask, Django, ...);
  it is called once per container, after ``@enter``.
- ``web_server(port)``: the function starts a server (usually a subprocess) listening on ``port``; the
  container takes requests once it accepts connections, or fails after ``startup_timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from vivace.exception import InvalidError
from vivace.protocol.web import WebSpecError, check_web

T = TypeVar("T")
WEB = "_vivace_web"  # the endpoint's settings (protocol.web.check_web)


def _mark(name: str, settings: dict[str, Any]) -> Callable[[T], T]:
    import inspect

    from vivace.decorators import _plain_function

    try:
        checked = check_web(settings)
    except WebSpecError as err:
        raise InvalidError(f"@vivace.{name}(): {err}") from None

    def wrap(f: T) -> T:
        _plain_function(name, f)
        if inspect.isclass(f):
            raise InvalidError(f"@vivace.{name}() goes on a function or a method, not on a class")
        if inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f):
            raise InvalidError(
                f"@vivace.{name}(): a web endpoint cannot be a generator; return a StreamingResponse"
            )
        if getattr(f, WEB, None) is not None:
            raise InvalidError(f"{getattr(f, '__name__', f)} already has a web endpoint decorator")
        setattr(f, WEB, checked)
        return f

    return wrap


def _no_bare(name: str, arg: Any) -> None:
    if arg is not None:
        raise InvalidError(f"use @vivace.{name}() with parentheses")


def fastapi_endpoint(
    _warn_parentheses_missing: Any = None,
    *,
    method: str = "GET",
    label: str | None = None,
    docs: bool = False,
    requires_proxy_auth: bool = False,
) -> Callable[[T], T]:
    """Serve this function at ``/`` of its URL for HTTP ``method`` (FastAPI in the image)."""
    _no_bare("fastapi_endpoint", _warn_parentheses_missing)
    return _mark(
        "fastapi_endpoint",
        {"kind": "fastapi", "method": method, "label": label, "docs": docs,
         "requires_proxy_auth": requires_proxy_auth},
    )  # fmt: skip


def asgi_app(
    _warn_parentheses_missing: Any = None, *, label: str | None = None, requires_proxy_auth: bool = False
) -> Callable[[T], T]:
    """Serve the ASGI app this function returns (called once per container)."""
    _no_bare("asgi_app", _warn_parentheses_missing)
    return _mark("asgi_app", {"kind": "asgi", "label": label, "requires_proxy_auth": requires_proxy_auth})


def wsgi_app(
    _warn_parentheses_missing: Any = None, *, label: str | None = None, requires_proxy_auth: bool = False
) -> Callable[[T], T]:
    """Serve the WSGI app this function returns (called once per container; requests run in threads)."""
    _no_bare("wsgi_app", _warn_parentheses_missing)
    return _mark("wsgi_app", {"kind": "wsgi", "label": label, "requires_proxy_auth": requires_proxy_auth})


def web_server(
    port: int,
    *,
    startup_timeout: float = 5.0,
    label: str | None = None,
    requires_proxy_auth: bool = False,
) -> Callable[[T], T]:
    """Serve whatever this function starts listening on ``port`` inside the container."""
    return _mark(
        "web_server",
        {"kind": "server", "port": port, "startup_timeout": startup_timeout, "label": label,
         "requires_proxy_auth": requires_proxy_auth},
    )  # fmt: skip


def web_settings(obj: Any) -> dict[str, Any] | None:
    value = getattr(obj, WEB, None)
    return dict(value) if value is not None else None
