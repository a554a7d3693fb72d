"""The ASGI app: the route table (also the source of the OpenAPI document) and its lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from vivace._version import __version__
from vivace.server.api import (
    calls,
    dashboard,
    gateway,
    images,
    metrics,
    resources,
    sandboxes,
    secrets,
    storage,
    usage,
    volumes,
    workers,
)
from vivace.server.api.common import route
from vivace.server.errors import ApiError, NotFound
from vivace.server.plane import ControlPlane

FRAMES = "frames"  # request or response body in vivace's binary frame format (see protocol/frames.py)

# (method, path, handler, body kind, response kind, summary)
ROUTES: list[tuple[str, str, Any, str | None, str, str]] = [
    ("GET", "/v1/version", resources.version, None, "json", "Server version and store kind"),
    ("POST", "/v1/tokens", resources.create_token, "json", "json", "Create a token (user or worker)"),
    ("GET", "/v1/tokens/me", resources.token_info, None, "json", "Describe the calling token"),
    (
        "POST",
        "/v1/apps",
        resources.create_app,
        "json",
        "json",
        "Create an ephemeral app or deploy one by name",
    ),
    ("GET", "/v1/apps", resources.list_apps, None, "json", "List apps"),
    ("GET", "/v1/apps/lookup", resources.lookup_app, None, "json", "Find a deployed app by name"),
    (
        "POST",
        "/v1/apps/{app_id}/heartbeat",
        resources.app_heartbeat,
        None,
        "json",
        "Keep an ephemeral app alive",
    ),
    ("POST", "/v1/apps/{app_id}/stop", resources.stop_app, None, "json", "Stop an app and its containers"),
    (
        "POST",
        "/v1/apps/{app_id}/deployments",
        resources.record_deploy,
        "json",
        "json",
        "Record the end of a deploy as the app's next version",
    ),
    ("GET", "/v1/apps/{app_id}/versions", resources.app_history, None, "json", "An app's deploy history"),
    (
        "GET",
        "/v1/apps/{app_id}/functions",
        resources.list_functions,
        None,
        "json",
        "An app's functions and load",
    ),
    (
        "POST",
        "/v1/apps/{app_id}/rollback",
        resources.rollback_app,
        "json",
        "json",
        "Deploy an earlier version of an app again",
    ),
    (
        "GET",
        "/v1/apps/{app_id}/schedules",
        resources.app_schedules,
        None,
        "json",
        "An app's scheduled functions and their next runs",
    ),
    (
        "POST",
        "/v1/apps/{app_id}/functions",
        resources.register_function,
        FRAMES,
        "json",
        "Register a function",
    ),
    (
        "GET",
        "/v1/functions/lookup",
        resources.lookup_function,
        None,
        "json",
        "Find a deployed function by name",
    ),
    (
        "POST",
        "/v1/functions/{function_id}/variants",
        resources.create_variant,
        "json",
        "json",
        "Bind class parameters or options to a function (idempotent by content)",
    ),
    ("GET", "/v1/functions/{function_id}/web", gateway.web_urls, None, "json", "A function's web URLs"),
    (
        "GET",
        "/v1/web/calls/{call_id}/messages",
        gateway.messages,
        None,
        FRAMES,
        "A WebSocket session's client messages, for its container",
    ),
    (
        "GET",
        "/v1/functions/{function_id}/stats",
        resources.function_stats,
        None,
        "json",
        "Backlog and runners",
    ),
    (
        "POST",
        "/v1/functions/{function_id}/autoscaler",
        resources.update_autoscaler,
        "json",
        "json",
        "Change autoscaler settings",
    ),
    (
        "POST",
        "/v1/calls",
        calls.create_call,
        "json",
        "json",
        "Create a function call (idempotent by call_id)",
    ),
    (
        "POST",
        "/v1/calls/{call_id}/inputs",
        calls.put_inputs,
        FRAMES,
        "json",
        "Upload inputs (idempotent by (call_id, idx))",
    ),
    (
        "GET",
        "/v1/calls/{call_id}/outputs",
        calls.get_outputs,
        None,
        FRAMES,
        "Long-poll outputs after a cursor",
    ),
    ("POST", "/v1/calls/{call_id}/cancel", calls.cancel_call, "json", "json", "Cancel a function call"),
    (
        "GET",
        "/v1/calls",
        calls.list_calls,
        None,
        "json",
        "Recent calls: status, duration, retries, errors, cost",
    ),
    (
        "POST",
        "/v1/dashboard/login",
        dashboard.create_login,
        None,
        "json",
        "A one-time path that opens the dashboard in a browser",
    ),
    (
        "GET",
        "/v1/calls/{call_id}/usage",
        usage.call_usage,
        None,
        "json",
        "A call's inputs, run time and cost",
    ),
    ("GET", "/v1/usage", usage.get_usage, None, "json", "Usage and cost over time, grouped"),
    ("GET", "/v1/pools", usage.list_pools, None, "json", "Worker pools, their prices and workers"),
    ("GET", "/v1/spend-limits", usage.list_limits, None, "json", "Spend limits and what each has spent"),
    (
        "PUT",
        "/v1/spend-limits",
        usage.set_limit,
        "json",
        "json",
        "Set the workspace's or an app's spend limit",
    ),
    ("DELETE", "/v1/spend-limits", usage.remove_limit, None, "json", "Remove a spend limit"),
    ("GET", "/v1/containers", resources.list_containers, None, "json", "List containers"),
    ("GET", "/v1/containers/{container_id}", resources.get_container, None, "json", "Describe a container"),
    (
        "POST",
        "/v1/containers/{container_id}/stop",
        resources.stop_container,
        None,
        "json",
        "Stop a container",
    ),
    (
        "POST",
        "/v1/containers/{container_id}/exec",
        resources.exec_in_container,
        "json",
        "json",
        "Run a command in a container through its worker's channel",
    ),
    ("GET", "/v1/workers", resources.list_workers, None, "json", "List live workers"),
    (
        "POST",
        "/v1/images",
        images.register_image,
        "json",
        "json",
        "Register an image (idempotent by content)",
    ),
    ("GET", "/v1/images", images.list_images, None, "json", "List images"),
    ("GET", "/v1/images/{image_id}", images.get_image, None, "json", "An image's state and build log"),
    ("DELETE", "/v1/images/{image_id}", images.delete_image, None, "json", "Forget an image"),
    (
        "POST",
        "/v1/workers/builds",
        images.take_build,
        "json",
        "json",
        "Long-poll for an image to build (worker token)",
    ),
    (
        "POST",
        "/v1/images/{image_id}/layers",
        images.add_layer,
        "json",
        "json",
        "Record a built layer (worker)",
    ),
    (
        "POST",
        "/v1/images/{image_id}/logs",
        images.add_build_logs,
        "json",
        "json",
        "Append build log lines (worker)",
    ),
    ("POST", "/v1/images/{image_id}/finish", images.finish_build, "json", "json", "End a build (worker)"),
    ("GET", "/v1/logs", resources.read_logs, None, "json", "Read or follow logs by app or container"),
    ("PUT", "/v1/blobs/{sha}", resources.put_blob, "binary", "json", "Upload a content-addressed blob"),
    # HEAD first: a GET route answers HEAD too, and containers may check blobs but not read them
    ("HEAD", "/v1/blobs/{sha}", resources.head_blob, None, "binary", "Check that a blob exists"),
    ("GET", "/v1/blobs/{sha}", resources.get_blob, None, "binary", "Download a blob"),
    ("POST", "/v1/workers", workers.register, "json", "json", "Register a worker (worker token)"),
    (
        "POST",
        "/v1/workers/{worker_id}/poll",
        workers.poll,
        "json",
        FRAMES,
        "Worker heartbeat and long-poll for containers to start or stop",
    ),
    (
        "POST",
        "/v1/workers/{worker_id}/events",
        workers.events,
        "json",
        "json",
        "Report container starts and exits",
    ),
    (
        "POST",
        "/v1/workers/{worker_id}/containers/{container_id}/exchange",
        calls.exchange,
        FRAMES,
        FRAMES,
        "Hand in outputs and lease the next inputs for a container",
    ),
    ("POST", "/v1/logs", workers.put_logs, "json", "json", "Store a batch of log lines (worker token)"),
    # volumes: listings and commits (content moves as blobs)
    ("GET", "/v1/volumes/{object_id}/entries", volumes.list_entries, None, "json", "List a volume's files"),
    ("GET", "/v1/volumes/{object_id}/file", volumes.read_file, None, "binary", "Read one file of a volume"),
    ("POST", "/v1/volumes/{object_id}/commit", volumes.commit, "json", "json", "Change a volume's files"),
    (
        "POST",
        "/v1/volumes/{object_id}/mount/{action}",
        volumes.mount_only,
        "json",
        "json",
        "Commit or reload a mounted volume (answered by the container's worker)",
    ),
    # secrets: values go in, only ids come out (list and delete: the /v1/objects/secret routes)
    ("POST", "/v1/secrets", secrets.create_secret, "json", "json", "Create (or overwrite) a named secret"),
    (
        "POST",
        "/v1/secrets/inline",
        secrets.create_inline,
        "json",
        "json",
        "An app's inline secret (reused while its values are the same)",
    ),
    (
        "POST",
        "/v1/secrets/lookup",
        secrets.lookup_secret,
        "json",
        "json",
        "Find a named secret, checking required keys",
    ),
    # storage objects (Dict, Queue, Volume, Secret): by name or ephemeral, contents as binary frames
    (
        "POST",
        "/v1/objects/{kind}/lookup",
        storage.lookup_object,
        "json",
        "json",
        "Find (or create) a named Dict or Queue",
    ),
    (
        "POST",
        "/v1/objects/{kind}/ephemeral",
        storage.create_ephemeral,
        None,
        "json",
        "Create an ephemeral Dict or Queue",
    ),
    ("POST", "/v1/objects/{kind}", storage.create_object, "json", "json", "Create a named Dict or Queue"),
    ("GET", "/v1/objects/{kind}", storage.list_objects, None, "json", "List named Dicts or Queues"),
    (
        "DELETE",
        "/v1/objects/{kind}/{name}",
        storage.delete_object,
        None,
        "json",
        "Delete a named Dict or Queue and its contents",
    ),
    (
        "DELETE",
        "/v1/ephemeral/{object_id}",
        storage.delete_ephemeral,
        None,
        "json",
        "Delete an ephemeral object and its contents",
    ),
    (
        "POST",
        "/v1/ephemeral/{object_id}/heartbeat",
        storage.heartbeat_object,
        None,
        "json",
        "Keep an ephemeral object alive",
    ),
    (
        "POST",
        "/v1/dicts/{object_id}/put",
        storage.dict_put,
        FRAMES,
        "json",
        "Put entries (key and value frames in pairs)",
    ),
    ("POST", "/v1/dicts/{object_id}/get", storage.dict_get, FRAMES, FRAMES, "Get (or pop) one entry"),
    ("GET", "/v1/dicts/{object_id}/len", storage.dict_len, None, "json", "Number of entries"),
    ("POST", "/v1/dicts/{object_id}/items", storage.dict_items, FRAMES, FRAMES, "A page of entries"),
    ("POST", "/v1/dicts/{object_id}/clear", storage.dict_clear, None, "json", "Remove every entry"),
    ("POST", "/v1/queues/{object_id}/put", storage.queue_put, FRAMES, "json", "Append items to a partition"),
    (
        "POST",
        "/v1/queues/{object_id}/get",
        storage.queue_get,
        "json",
        FRAMES,
        "Take (or peek at) items; long-polls with wait",
    ),
    ("POST", "/v1/queues/{object_id}/len", storage.queue_len, "json", "json", "Number of items"),
    (
        "POST",
        "/v1/queues/{object_id}/clear",
        storage.queue_clear,
        "json",
        "json",
        "Remove a partition's items or all",
    ),
    *sandboxes.ROUTES,
]


def openapi() -> dict[str, Any]:
    media = {
        "json": "application/json",
        FRAMES: "application/vnd.vivace.frames",
        "binary": "application/octet-stream",
    }
    problem = {
        "description": "problem+json error",
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }
    paths: dict[str, Any] = {}
    for method, path, handler, body, resp, summary in ROUTES:
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": handler.__name__,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {media[resp]: {"schema": {}}}},
                **{str(c): problem for c in (401, 403, 404, 409, 422)},
            },
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ]
        if body:
            op["requestBody"] = {"content": {media[body]: {"schema": {}}}}
        paths.setdefault(path, {})[method.lower()] = op
    paths["/v1/workers/{worker_id}/channel"] = {
        "get": {
            "summary": "WebSocket channel (worker token)",
            "responses": {"101": {"description": "Switching"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Vivace control plane", "version": __version__},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "TOKEN_ID:TOKEN_SECRET"}
            }
        },
        "paths": paths,
    }


@route(kinds=("user", "worker"))
async def openapi_route(request: Request) -> Response:
    return JSONResponse(openapi())


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True, "version": __version__})


async def not_found(request: Request, exc: Exception) -> Response:
    from vivace.server.api.common import problem

    return problem(NotFound(f"no route {request.method} {request.url.path}"))


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    from vivace.server.api.common import problem

    return problem(
        ApiError(
            f"method {request.method} not allowed on {request.url.path}",
            code="method_not_allowed",
            status=405,
        )
    )


TUNNEL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(plane: ControlPlane, *, manage_plane: bool = True) -> Starlette:
    routes: list[Any] = [Route(path, handler, methods=[m]) for m, path, handler, *_ in ROUTES]
    routes += [
        Route("/v1/openapi.json", openapi_route, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics.scrape, methods=["GET"]),
        Route("/dashboard", dashboard.to_index, methods=["GET"]),
        Route("/dashboard/login", dashboard.login, methods=["GET"]),
        Route(dashboard.LOGOUT_PATH, dashboard.logout, methods=["GET"]),
        Route("/dashboard/", dashboard.asset, methods=["GET"]),
        Route("/dashboard/{name}", dashboard.asset, methods=["GET"]),
        WebSocketRoute("/v1/workers/{worker_id}/channel", workers.channel),
        # a sandbox's tunnel: its unguessable token is the credential (see api/tunnels.py)
        Route("/t/{token}/{path:path}", sandboxes.tunnel_proxy, methods=TUNNEL_METHODS),
        # web endpoints by path (by host: gateway.ByHost); public unless requires_proxy_auth
        Route("/web/{host}", gateway.by_path, methods=gateway.METHODS),
        Route("/web/{host}/{path:path}", gateway.by_path, methods=gateway.METHODS),
        WebSocketRoute("/web/{host}", gateway.ws_by_path),
        WebSocketRoute("/web/{host}/{path:path}", gateway.ws_by_path),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_plane:
            await plane.start()
        try:
            yield
        finally:
            if manage_plane:
                await plane.stop()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed},
        middleware=[Middleware(gateway.ByHost, config=plane.config)],
    )
    app.state.plane = plane
    return app
