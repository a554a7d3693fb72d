"""Volumes over HTTP: listings and commits; file content moves through ``/v1/blobs/{sha256}``.

A client (or a worker committing a container's mount) uploads each new file as a blob, then commits
operations that name the blobs; the commit is refused if one is missing, so a volume never names content
the store does not have. Workers call these routes for the containers they run (assembling a mount,
committing it), with their own token.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vivace.protocol.volumes import PathError, check_ops, norm_path
from vivace.server.api.common import field, json_body, plane_of, route
from vivace.server.errors import Invalid, NotFound
from vivace.server.services import volumes

KINDS = ("user", "container", "worker")


def _path_query(request: Request) -> str:
    """The ``?path=`` of a request in its stored form (the root when absent)."""
    try:
        return norm_path(request.query_params.get("path", ""))
    except PathError as err:
        raise Invalid(str(err), code="invalid_path") from None


@route(kinds=KINDS)
async def list_entries(request: Request) -> Response:
    """``?path=`` (default the root) and ``recursive=1``: the volume's version and the entries there."""
    vid = request.path_params["object_id"]
    path = _path_query(request)
    recursive = request.query_params.get("recursive", "0") in ("1", "true")
    ver, items = await plane_of(request).store.read(lambda tx: volumes.entries(tx, vid, path, recursive))
    return JSONResponse({"version": ver, "entries": items})


@route(kinds=KINDS)
async def read_file(request: Request) -> Response:
    """``?path=``: the file's content, streamed (containers read volume files here, not by digest)."""
    from vivace.server.api.resources import BlobFile

    vid = request.path_params["object_id"]
    path = _path_query(request)
    plane = plane_of(request)
    digest, _ = await plane.store.read(lambda tx: volumes.file_digest(tx, vid, path))
    blob = plane.blobs.path(digest)
    if blob is None:
        raise NotFound(
            f"the content of {path!r} ({digest}) is missing from the blob store", code="missing_blob"
        )
    return BlobFile(blob, media_type="application/octet-stream")


@route(kinds=KINDS)
async def commit(request: Request) -> Response:
    vid = request.path_params["object_id"]
    body = await json_body(request)
    try:
        ops = check_ops(field(body, "ops", list))
    except ValueError as err:  # PathError included
        raise Invalid(str(err), code="invalid_path" if isinstance(err, PathError) else "invalid") from None
    plane = plane_of(request)
    missing = sorted(
        {op["digest"] for op in ops if op["op"] == "put" and not plane.blobs.exists(op["digest"])}
    )
    if missing:
        raise Invalid(f"upload the content first: blob {missing[0]} is missing", code="missing_blob")
    ver = await plane.store.write(lambda tx: volumes.commit(tx, vid, ops))
    return JSONResponse({"version": ver})


@route(kinds=("user", "container"))
async def mount_only(request: Request) -> Response:
    """``commit()`` and ``reload()`` act on a container's mount: its worker answers them. One that reaches
    the control plane came from outside such a container."""
    raise Invalid(
        "Volume.commit() and reload() work inside a container that mounts the volume (volumes={path: vol}); "
        "from outside, batch_upload() and remove_file() change the volume directly",
        code="not_mounted",
    )
