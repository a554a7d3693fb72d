"""Image routes: users register and watch builds; workers take builds and report layers and logs."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vivace.protocol import images as proto
from vivace.server.api.common import (
    USERS,
    check_worker,
    field,
    json_body,
    plane_of,
    query_float,
    query_int,
    route,
)
from vivace.server.errors import Invalid, NotFound
from vivace.server.services import images, secrets


def _info(info: images.ImageInfo) -> dict[str, Any]:
    return {
        "image_id": info.id,
        "state": info.state,
        "error": info.error,
        "steps": info.steps,
        "layers": info.layers,
    }


@route(kinds=USERS)
async def register_image(request: Request) -> Response:
    """Body ``{"steps": [...]}``: create the image (or find it); ``ready`` when every layer exists."""
    body = await json_body(request)
    try:
        steps = proto.validate_steps(body.get("steps"))
    except proto.StepError as err:
        raise Invalid(f"invalid image: {err}") from None
    plane = plane_of(request)
    missing = [
        s["digest"]
        for s in steps
        if s["kind"] in ("add_files", "run_function") and not plane.blobs.exists(s["digest"])
    ]
    if missing:
        raise Invalid(f"upload the local files first: blob {missing[0]} is missing")
    info = await plane.store.write(lambda tx: images.register(tx, steps))
    if info.state == "pending":
        plane.notifier.wake("builds")
    return JSONResponse(_info(info))


@route(kinds=USERS)
async def get_image(request: Request) -> Response:
    """The image's state and build log lines after ``cursor``; ``wait`` long-polls for either to move."""
    image_id = request.path_params["image_id"]
    cursor = query_int(request, "cursor", 0, 0, 2**62)
    wait = query_float(request, "wait", 0.0, 0.0, 60.0)
    plane = plane_of(request)
    deadline = time.monotonic() + wait
    while True:
        ev = plane.notifier.event(f"image:{image_id}")
        info = await plane.store.read(lambda tx: images.get(tx, image_id))
        lines = await plane.store.read(lambda tx: images.read_logs(tx, image_id, cursor))
        remaining = deadline - time.monotonic()
        if lines or info.state in ("ready", "failed") or remaining <= 0:
            break
        await plane.notifier.wait(ev, remaining)
    return JSONResponse({**_info(info), "logs": lines, "cursor": lines[-1]["id"] if lines else cursor})


@route()
async def list_images(request: Request) -> Response:
    return JSONResponse({"images": await plane_of(request).store.read(images.list_images)})


@route()
async def delete_image(request: Request) -> Response:
    image_id = request.path_params["image_id"]
    await plane_of(request).store.write(lambda tx: images.delete(tx, image_id))
    return JSONResponse({"image_id": image_id, "deleted": True})


# -- workers ----------------------------------------------------------------------------------------
@route(kinds=("worker",))
async def take_build(request: Request) -> Response:
    """Long-poll (``wait`` seconds) for an image to build; answers ``{}`` when there is none."""
    body = await json_body(request)
    worker_id = field(body, "worker_id", str)
    wait = field(body, "wait", (int, float), 0)
    if not 0 <= wait <= 60:
        raise Invalid("'wait' must be 0-60 seconds")
    await check_worker(request, worker_id)
    plane = plane_of(request)
    deadline = time.monotonic() + float(wait)

    def take(tx: Any) -> tuple[str | None, dict[str, dict[str, str]] | None]:
        image_id = images.take_build(tx, worker_id)
        if image_id is None:
            return None, None
        info = images.get(tx, image_id)
        try:  # the build steps' secrets travel with this lease only
            return image_id, secrets.build_envs(tx, plane.secretbox, info.steps, info.layers)
        except NotFound as err:  # fails now with the reason, rather than on the worker
            images.finish(tx, image_id, worker_id, err.message)
            return image_id, None

    while True:
        ev = plane.notifier.event("builds")
        image_id, envs = await plane.store.write(take)
        if image_id is not None and envs is None:
            plane.notifier.wake(f"image:{image_id}")
            image_id = None
        remaining = deadline - time.monotonic()
        if image_id is not None or remaining <= 0:
            break
        await plane.notifier.wait(ev, min(remaining, images.BUILD_LEASE / 2))
    if image_id is None:
        return JSONResponse({})
    info = await plane.store.read(lambda tx: images.get(tx, image_id))
    plane.notifier.wake(f"image:{image_id}")
    return JSONResponse({**_info(info), "secret_env": envs or {}})


async def _builder(request: Request) -> tuple[str, str, dict[str, Any]]:
    body = await json_body(request)
    worker_id = field(body, "worker_id", str)
    await check_worker(request, worker_id)
    return request.path_params["image_id"], worker_id, body


@route(kinds=("worker",))
async def add_layer(request: Request) -> Response:
    image_id, worker_id, body = await _builder(request)
    key, digest = field(body, "key", str), field(body, "digest", str)
    size = field(body, "size", int)
    if not proto.DIGEST.fullmatch(digest) or size < 0:
        raise Invalid("'digest' must be a hex sha256 and 'size' non-negative")
    config = body.get("config")
    if config is not None:
        try:
            config = proto.validate_layer_config(config)
        except proto.StepError as err:
            raise Invalid(f"'config': {err}") from None
    plane = plane_of(request)
    if not plane.blobs.exists(digest):
        raise Invalid(f"layer blob {digest} has not been uploaded")
    await plane.store.write(lambda tx: images.add_layer(tx, image_id, worker_id, key, digest, size, config))
    return JSONResponse({"ok": True})


@route(kinds=("worker",))
async def add_build_logs(request: Request) -> Response:
    image_id, worker_id, body = await _builder(request)
    lines = field(body, "lines", list)
    if not all(isinstance(line, str) for line in lines) or len(lines) > 5000:
        raise Invalid("'lines' must be at most 5000 strings")
    plane = plane_of(request)
    await plane.store.write(lambda tx: images.add_logs(tx, image_id, worker_id, lines))
    plane.notifier.wake(f"image:{image_id}")
    return JSONResponse({"ok": True})


@route(kinds=("worker",))
async def finish_build(request: Request) -> Response:
    image_id, worker_id, body = await _builder(request)
    error = field(body, "error", str, None, optional=True)
    plane = plane_of(request)
    await plane.store.write(lambda tx: images.finish(tx, image_id, worker_id, error))
    plane.notifier.wake(f"image:{image_id}")
    return JSONResponse({"ok": True})
