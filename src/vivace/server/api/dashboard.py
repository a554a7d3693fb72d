"""The dashboard: static pages served by the control plane, reading the API with a browser session.

``vivace dashboard`` asks for a one-time login code (``POST /v1/dashboard/login``, a user token) and
opens ``/dashboard/login?code=...`` in the browser; that spends the code for a session cookie
(``HttpOnly``, ``SameSite=Strict``, 12 hours) and goes to ``/dashboard/``. A session reads what a user
may read (GET routes) and nothing else; its cookie is sent to ``/v1/`` only. The pages are plain HTML, CSS and JavaScript shipped in the
package (no build step); they put user text into the page only as text, and a Content-Security-Policy
allows scripts from this server alone.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from vivace._version import __version__
from vivace.server.api.common import SESSION_COOKIE, plane_of, route
from vivace.server.errors import NotFound
from vivace.server.services import tokens

# the session cookie goes to the API only: never to web endpoints served by path on this host
# (/web/...), whose apps see their requests' headers (the gateway strips it there too)
COOKIE_PATH = "/v1/"
LOGOUT_PATH = "/v1/dashboard/logout"
ASSETS = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@route()
async def create_login(request: Request) -> Response:
    """A one-time code that opens the dashboard in a browser (valid ``LOGIN_TTL`` seconds)."""
    tid, secret = await plane_of(request).store.write(
        lambda tx: tokens.create_token(tx, "login", "dashboard login", ttl=tokens.LOGIN_TTL)
    )
    return JSONResponse({"path": f"/dashboard/login?code={tid}:{secret}", "expires_in": tokens.LOGIN_TTL})


def _page(title: str, text: str, status: int) -> HTMLResponse:
    body = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Vivace</title>'
        '<link rel="stylesheet" href="/dashboard/dashboard.css"></head>'
        f'<body><main class="message"><h1>{title}</h1><p>{text}</p></main></body></html>'
    )
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


async def login(request: Request) -> Response:
    """Spend a login code for a session cookie, then go to the dashboard."""
    code = request.query_params.get("code", "")
    token_id, _, secret = code.partition(":")
    session = None
    if token_id and secret:
        session = await plane_of(request).store.write(lambda tx: tokens.exchange_login(tx, token_id, secret))
    if session is None:
        return _page(
            "This link has expired",
            "A dashboard link works once, for two minutes. Run <code>vivace dashboard</code> again.",
            401,
        )
    resp = RedirectResponse("/dashboard/", status_code=303, headers=SECURITY_HEADERS)
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    resp.set_cookie(
        SESSION_COOKIE,
        f"{session[0]}:{session[1]}",
        max_age=int(tokens.SESSION_TTL),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    return resp


async def logout(request: Request) -> Response:
    raw = request.cookies.get(SESSION_COOKIE, "")
    token_id, _, secret = raw.partition(":")
    plane = plane_of(request)
    if token_id and secret:

        def op(tx: Any) -> None:
            found = tokens.verify_until(tx, token_id, secret)
            if found is not None and found[0] == "session":
                tokens.revoke(tx, token_id)

        await plane.store.write(op)
        plane.token_cache.pop(token_id, None)
    resp = _page("Signed out", "Run <code>vivace dashboard</code> to open the dashboard again.", 200)
    resp.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return resp


async def asset(request: Request) -> Response:
    """The dashboard's files (only these names: nothing else of the package is served)."""
    name = request.path_params.get("name", "")
    if name not in ASSETS:
        from vivace.server.api.common import problem

        return problem(NotFound(f"no dashboard file {name!r}"))
    filename, media = ASSETS[name]
    data = resources.files("vivace.server").joinpath("dashboard", filename).read_text()
    if filename == "index.html":
        data = data.replace("{{VERSION}}", __version__)
    return Response(data, media_type=media, headers=SECURITY_HEADERS)


async def to_index(request: Request) -> Response:
    return RedirectResponse("/dashboard/", status_code=307)
