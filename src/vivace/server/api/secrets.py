"""Secrets over HTTP: create named or inline ones, look one up by name. No route returns values.

Values come in (``env``) and never go out: every answer carries ids only, and errors name keys, not
values. A secret's values leave the server only inside the assignment of a worker that starts a
container of a function naming it (``api/workers.py``). Listing and deleting named secrets use the
generic ``/v1/objects/secret`` routes, which show names and times.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vivace.server.api.common import USERS, field, json_body, plane_of, route
from vivace.server.errors import Forbidden, Invalid
from vivace.server.services import secrets


@route(kinds=("user",))
async def create_secret(request: Request) -> Response:
    """A named secret; an existing name is a conflict unless ``overwrite``. Containers may not: one
    could otherwise change what another app's functions run with."""
    body = await json_body(request)
    name = field(body, "name", str)
    env = field(body, "env", dict)
    overwrite = field(body, "overwrite", bool, False)
    plane = plane_of(request)
    oid, created = await plane.store.write(
        lambda tx: secrets.create(tx, plane.secretbox, name, env, overwrite)
    )
    return JSONResponse({"secret_id": oid, "created": created})


@route(kinds=USERS)
async def create_inline(request: Request) -> Response:
    """An inline secret (``Secret.from_dict`` ...) of an app: reused while its values stay the same."""
    body = await json_body(request)
    app_id = field(body, "app_id", str)
    env = field(body, "env", dict)
    if getattr(request.state, "token_kind", None) == "container" and app_id != request.state.scope_app:
        raise Forbidden("a container may create inline secrets for its own app only")
    plane = plane_of(request)
    oid = await plane.store.write(lambda tx: secrets.create_inline(tx, plane.secretbox, app_id, env))
    return JSONResponse({"secret_id": oid})


@route(kinds=USERS)
async def lookup_secret(request: Request) -> Response:
    """The id of a named secret; with ``required_keys``, ``missing_keys`` (404) names those it lacks."""
    body = await json_body(request)
    name = field(body, "name", str)
    required = field(body, "required_keys", list, [])
    if not all(isinstance(k, str) for k in required):
        raise Invalid("required_keys must be a list of strings")
    plane = plane_of(request)
    oid = await plane.store.read(lambda tx: secrets.lookup(tx, plane.secretbox, name, required))
    return JSONResponse({"secret_id": oid})
