"""Request parsing, authentication and problem+json errors shared by every route."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vivace.protocol import frames
from vivace.protocol.versions import CONTAINER_HEADER, VERSION_HEADER, check_compatible
from vivace.server.errors import ApiError, Invalid, Unauthorized, VersionMismatch
from vivace.server.plane import ControlPlane
from vivace.server.services import tokens
from vivace.server.store.base import StoreError

log = logging.getLogger("vivace.server")

Handler = Callable[[Request], Awaitable[Response]]
AUTH_CACHE_SECONDS = 30.0
USERS = ("user", "container")  # routes a container may call through its worker (with its app's scope)
MAX_BODY = 300 * 1024 * 1024


def problem(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {
            "type": "about:blank",
            "title": exc.code,
            "status": exc.status,
            "code": exc.code,
            "detail": exc.message,
        },
        status_code=exc.status,
        media_type="application/problem+json",
    )


def plane_of(request: Request) -> ControlPlane:
    return request.app.state.plane  # type: ignore[no-any-return]


SESSION_COOKIE = "vivace_session"


async def authenticate(request: Request) -> str:
    """Return the token kind (``user``, ``worker``, ...; ``session`` for the dashboard's cookie) or
    raise 401."""
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        raw = header[7:].strip()
    elif SESSION_COOKIE in request.cookies:
        raw = request.cookies[SESSION_COOKIE]
    else:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer TOKEN_ID:TOKEN_SECRET'")
    token_id, _, secret = raw.partition(":")
    request.scope["vivace.token_id"] = token_id
    if not token_id or not secret:
        raise Unauthorized("malformed token: expected TOKEN_ID:TOKEN_SECRET")
    plane = plane_of(request)
    cached = plane.token_cache.get(token_id)
    digest = tokens.hash_secret(secret)
    if cached and cached[0] == digest and cached[2] > time.monotonic():
        kind = cached[1]
    else:
        found = await plane.store.read(lambda tx: tokens.verify_until(tx, token_id, secret))
        if found is None:
            raise Unauthorized("invalid, revoked or expired token")
        kind, expires = found
        ttl = AUTH_CACHE_SECONDS if expires is None else min(AUTH_CACHE_SECONDS, expires - time.time())
        plane.token_cache[token_id] = (digest, kind, time.monotonic() + max(0.0, ttl))
    if not header.startswith("Bearer ") and kind != "session":
        raise Unauthorized("the session cookie holds no dashboard session; open the dashboard again")
    if kind == "login":
        raise Unauthorized("a login code opens the dashboard once (/dashboard/login), nothing else")
    return str(kind)


async def container_scope(request: Request, container_id: str) -> str:
    """The app a container acts for. Its worker must have been registered by the calling token, and a
    function with ``restrict_modal_access=True`` gets no API access beyond its own inputs."""
    from vivace.server.errors import Forbidden

    plane = plane_of(request)
    scope = plane.container_scopes.get(container_id)
    if scope is None:
        row = await plane.store.read(
            lambda tx: tx.fetchone(
                "SELECT c.app_id, w.token_id, f.spec FROM containers c JOIN workers w ON w.id = c.worker_id "
                "JOIN functions f ON f.id = c.function_id WHERE c.id = ? AND c.state <> 'stopped'",
                (container_id,),
            )
        )
        if row is None:
            raise Forbidden(f"container {container_id} is not running")
        restricted = bool(json.loads(row[2]).get("restrict_modal_access"))
        scope = (str(row[0]), str(row[1]), restricted)
        plane.container_scopes[container_id] = scope
    app_id, token_id, restricted = scope
    if token_id != request.scope.get("vivace.token_id"):
        raise Forbidden(f"this token's worker does not run container {container_id}")
    if restricted:
        raise Forbidden("this function has restrict_modal_access=True: it may not call the vivace API")
    return app_id


async def allow_function(request: Request, function_id: str) -> None:
    """A container may use its own app's functions and deployed apps' ones; users any."""
    if getattr(request.state, "token_kind", None) != "container":
        return
    row = await plane_of(request).store.read(
        lambda tx: tx.fetchone(
            "SELECT f.app_id, a.state FROM functions f JOIN apps a ON a.id = f.app_id WHERE f.id = ?",
            (function_id,),
        )
    )
    if row is not None and row[0] != request.state.scope_app and row[1] != "deployed":
        from vivace.server.errors import Forbidden

        raise Forbidden(f"function {function_id} belongs to another app, which is not deployed")


async def allow_call(request: Request, call_id: str) -> None:
    if getattr(request.state, "token_kind", None) != "container":
        return
    fid = await plane_of(request).store.read(
        lambda tx: tx.scalar("SELECT function_id FROM calls WHERE id = ?", (call_id,))
    )
    if fid is not None:
        await allow_function(request, str(fid))


def route(*, kinds: tuple[str, ...] = ("user",), versioned: bool = True) -> Callable[[Handler], Handler]:
    """Wrap a handler: version check (unless not ``versioned``: routes other programs call, such as a
    Prometheus scrape), authentication, token kind, errors as problem+json."""

    def wrap(fn: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            try:
                msg = (
                    check_compatible(request.headers.get(VERSION_HEADER), "the client") if versioned else None
                )
                if msg:
                    raise VersionMismatch(msg)
                kind = await authenticate(request)
                cid = request.headers.get(CONTAINER_HEADER)
                if cid is not None and kind == "worker":  # a worker forwarding its container's call
                    request.state.scope_app = await container_scope(request, cid)
                    kind = "container"
                if kind == "session":  # the dashboard in a browser: it reads what a user may read
                    if request.method not in ("GET", "HEAD") or "user" not in kinds:
                        from vivace.server.errors import Forbidden

                        raise Forbidden("the dashboard's session only reads; use the CLI or the API for this")
                    kind = "user"
                if kind not in kinds:
                    from vivace.server.errors import Forbidden

                    raise Forbidden(f"a {kind} token may not call {request.method} {request.url.path}")
                request.state.token_kind = kind
                return await fn(request)
            except ApiError as exc:
                return problem(exc)
            except StoreError as exc:
                log.error("%s %s: %s", request.method, request.url.path, exc)
                return problem(
                    ApiError("the control plane's store failed; retry", code="store_unavailable", status=503)
                )

        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        return handler

    return wrap


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise Invalid(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Invalid("request body must be a JSON object")
    return data


async def frame_body(request: Request) -> tuple[dict[str, Any], list[bytes]]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        from vivace.server.errors import TooLarge

        raise TooLarge(f"request body of {len(raw)} bytes exceeds the limit of {MAX_BODY}")
    try:
        return frames.decode(raw)
    except frames.FrameError as exc:
        raise Invalid(str(exc)) from None


async def check_worker(request: Request, worker_id: str) -> None:
    """A worker token acts only for the workers it registered."""
    plane = plane_of(request)
    token_id = request.scope.get("vivace.token_id")
    owner = plane.worker_tokens.get(worker_id)
    if owner is None:
        owner = await plane.store.read(
            lambda tx: tx.scalar("SELECT token_id FROM workers WHERE id = ?", (worker_id,))
        )
        if owner is None:
            from vivace.server.errors import NotFound

            raise NotFound(f"worker {worker_id} is not registered")
        plane.worker_tokens[worker_id] = str(owner)
    if owner != token_id:
        from vivace.server.errors import Forbidden

        raise Forbidden(f"this token did not register worker {worker_id}")


def frame_response(header: dict[str, Any], blobs: list[bytes]) -> Response:
    return Response(frames.encode(header, blobs), media_type=frames.CONTENT_TYPE)


def field(
    data: dict[str, Any],
    name: str,
    typ: type | tuple[type, ...],
    default: Any = ...,
    *,
    optional: bool = False,
) -> Any:
    if name not in data or (optional and data[name] is None):
        if default is ...:
            raise Invalid(f"missing field {name!r}")
        return default
    value = data[name]
    if isinstance(value, bool) and typ in (int, float, (int, float)):
        raise Invalid(f"field {name!r} must be {_tname(typ)}, got a boolean")
    if not isinstance(value, typ):
        raise Invalid(f"field {name!r} must be {_tname(typ)}, got {type(value).__name__}")
    return value


def _tname(typ: type | tuple[type, ...]) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__


def query_float(request: Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise Invalid(f"query parameter {name!r} must be a number") from None
    if not lo <= value <= hi:
        raise Invalid(f"query parameter {name!r} must be between {lo:g} and {hi:g}")
    return value


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    return int(query_float(request, name, default, lo, hi))
