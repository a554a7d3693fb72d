"""Sandbox routes: create, describe, list, wait, terminate, tags; and their processes and files, relayed
to the sandbox's worker over its channel (the worker holds the bytes; nothing here buffers a stream)."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vivace.protocol import sandboxes as proto
from vivace.protocol.functions import FunctionSpec, SpecError
from vivace.server.api.common import (
    USERS,
    field,
    frame_body,
    frame_response,
    json_body,
    plane_of,
    query_float,
    route,
)
from vivace.server.channel import ChannelError
from vivace.server.errors import ApiError, Conflict, Forbidden, Invalid, SpendLimited
from vivace.server.services import apps
from vivace.server.services import sandboxes as svc

READY_WAIT = 120.0  # seconds a process or file request waits for a pending sandbox to start
MAX_WAIT = 50.0


def _check_scope(request: Request, app_id: str) -> None:
    """A container (a function creating sandboxes) acts only on its own app's sandboxes."""
    scope = getattr(request.state, "scope_app", None)
    if request.state.token_kind == "container" and scope != app_id:
        raise Forbidden("a container may only reach its own app's sandboxes")


async def _check_secret_scope(request: Request, secret_ids: list[str]) -> None:
    """A container (a function making sandboxes) may hand a sandbox only the secrets its own function was
    given: the sandbox's code is not trusted with any other of the app's or workspace's secrets."""
    if request.state.token_kind != "container" or not secret_ids:
        return
    from vivace.protocol.versions import CONTAINER_HEADER

    cid = request.headers.get(CONTAINER_HEADER, "")
    raw = await plane_of(request).store.read(
        lambda tx: tx.scalar(
            "SELECT f.spec FROM containers c JOIN functions f ON f.id = c.function_id WHERE c.id = ?", (cid,)
        )
    )
    allowed = set(json.loads(raw).get("secrets") or []) if raw else set()
    extra = sorted(set(secret_ids) - allowed)
    if extra:
        raise Forbidden(
            f"a function may give a sandbox only its own secrets; not {', '.join(extra)} "
            "(add them to the function's secrets=)"
        )


def _checked(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except proto.SandboxSpecError as err:
        raise Invalid(str(err)) from None


async def _info(request: Request) -> dict[str, Any]:
    sid = request.path_params["sandbox_id"]
    info = await plane_of(request).store.read(lambda tx: svc.get(tx, sid))
    _check_scope(request, info["app_id"])
    return info


@route(kinds=USERS)
async def create_sandbox(request: Request) -> Response:
    body = await json_body(request)
    app_id = field(body, "app_id", str)
    _check_scope(request, app_id)
    name = _checked(proto.check_name, body.get("name"))
    tags = _checked(proto.check_tags, body.get("tags"))
    raw = field(body, "spec", dict)
    if not isinstance(raw.get("sandbox"), dict):
        raise Invalid("spec.sandbox must hold the sandbox's settings")
    try:
        spec = FunctionSpec.from_dict(raw)
    except (SpecError, TypeError) as err:
        raise Invalid(f"invalid sandbox spec: {err}") from None
    if spec.max_inputs != 1 or spec.is_class or spec.batch_max_size or spec.min_containers:
        raise Invalid("a sandbox spec takes no function settings (classes, concurrency, batching, scaling)")
    await _check_secret_scope(request, list(spec.secrets))
    plane = plane_of(request)
    refusal = await plane.spend_refusal(app_id)
    if refusal is not None:
        raise SpendLimited(f"cannot create a sandbox: {refusal}")
    out = await plane.store.write(lambda tx: svc.create(tx, app_id, spec, name, tags))
    plane.notifier.wake("autoscale")  # the scheduler places the new container
    return JSONResponse(out)


@route(kinds=USERS)
async def get_sandbox(request: Request) -> Response:
    return JSONResponse(await _info(request))


@route(kinds=USERS)
async def lookup_sandbox(request: Request) -> Response:
    plane = plane_of(request)
    ref = request.query_params.get("app") or ""
    name = _checked(proto.check_name, request.query_params.get("name"))
    if not ref or name is None:
        raise Invalid("give 'app' (a name or id) and 'name'")
    app_id = await plane.store.read(lambda tx: apps.find_app(tx, ref))
    _check_scope(request, app_id)
    return JSONResponse(await plane.store.read(lambda tx: svc.find(tx, app_id, name)))


@route(kinds=USERS)
async def list_sandboxes(request: Request) -> Response:
    plane = plane_of(request)
    app_id = request.query_params.get("app_id") or None
    if request.state.token_kind == "container":
        app_id = app_id or request.state.scope_app
        _check_scope(request, app_id)
    try:
        tags = json.loads(request.query_params.get("tags") or "{}")
    except ValueError:
        raise Invalid("'tags' must be a JSON object of strings") from None
    tags = _checked(proto.check_tags, tags)
    finished = request.query_params.get("include_finished") in ("1", "true")
    rows = await plane.store.read(
        lambda tx: svc.list_sandboxes(tx, app_id=app_id, tags=tags, include_finished=finished)
    )
    return JSONResponse({"sandboxes": rows})


@route(kinds=USERS)
async def wait_sandbox(request: Request) -> Response:
    """Long-poll until the sandbox has finished, for at most ``wait`` seconds; returns its state."""
    info = await _info(request)
    plane = plane_of(request)
    deadline = time.monotonic() + query_float(request, "wait", 0.0, 0.0, MAX_WAIT)
    while info["state"] != "finished":
        ev = plane.notifier.event(f"container:{info['container_id']}")
        info = await plane.store.read(functools.partial(svc.get, sandbox_id=info["sandbox_id"]))
        remaining = deadline - time.monotonic()
        if info["state"] == "finished" or remaining <= 0:
            break
        await plane.notifier.wait(ev, min(remaining, 5.0))
    return JSONResponse(info)


@route(kinds=USERS)
async def terminate_sandbox(request: Request) -> Response:
    info = await _info(request)
    plane = plane_of(request)
    cid = await plane.store.write(lambda tx: svc.terminate(tx, info["sandbox_id"]))
    plane.workers_changed()
    plane.notifier.wake(f"container:{cid}")
    return JSONResponse({"sandbox_id": info["sandbox_id"]})


@route(kinds=USERS)
async def set_sandbox_tags(request: Request) -> Response:
    info = await _info(request)
    tags = _checked(proto.check_tags, (await json_body(request)).get("tags"))
    await plane_of(request).store.write(lambda tx: svc.set_tags(tx, info["sandbox_id"], tags))
    return JSONResponse({"sandbox_id": info["sandbox_id"], "tags": tags})


# -- processes and files: relayed to the worker -------------------------------------------------------
async def _started(plane: Any, info: dict[str, Any]) -> dict[str, Any]:
    """The sandbox's state once it is no longer pending (waiting up to ``READY_WAIT`` while it starts)."""
    deadline = time.monotonic() + READY_WAIT
    while info["state"] == "pending" and time.monotonic() < deadline:
        ev = plane.notifier.event(f"container:{info['container_id']}")
        info = await plane.store.read(functools.partial(svc.get, sandbox_id=info["sandbox_id"]))
        if info["state"] != "pending":
            break
        await plane.notifier.wait(ev, min(deadline - time.monotonic(), 5.0))
    return info


async def _relay(
    request: Request, payload: dict[str, Any], blobs: list[bytes], timeout: float
) -> dict[str, Any]:
    """Send ``payload`` to the worker running the sandbox, once it runs (waiting while it starts)."""
    plane = plane_of(request)
    info = await _started(plane, await _info(request))
    # a finished sandbox's worker still answers for its output and exit codes a while
    readable = info["state"] == "finished" and payload["type"] in ("sb_read", "sb_wait") and info["worker_id"]
    if info["state"] != "running" and not readable:
        why = f": {info['reason']}" if info.get("reason") else ""
        raise Conflict(f"sandbox {info['sandbox_id']} is {info['state']}{why}", code="sandbox_not_running")
    chan = plane.channels.get(info["worker_id"])
    if chan is None:
        raise ChannelError(f"worker {info['worker_id']} has no open channel")
    reply: dict[str, Any] = await chan.request(
        {**payload, "container_id": info["container_id"]}, timeout, blobs
    )
    if reply.get("error"):
        code = str(reply.get("code") or "sandbox_error")
        status = {"not_found": 404, "invalid": 422}.get(code, 409)
        raise Conflict(str(reply["error"]), code=code, status=status)
    return reply


@route(kinds=USERS)
async def exec_in_sandbox(request: Request) -> Response:
    body = await json_body(request)
    argv = _checked(functools.partial(proto.check_argv, allow_empty=False), body.get("argv"), "argv")
    env = _checked(proto.check_env, body.get("env"))
    workdir = _checked(proto.check_workdir, body.get("workdir"))
    timeout = field(body, "timeout", (int, float), None, optional=True)
    if timeout is not None and not 0 < timeout <= proto.MAX_TIMEOUT:
        raise Invalid(f"timeout must be from 0 to {proto.MAX_TIMEOUT} seconds")
    secret_ids = field(body, "secrets", list, [], optional=True)
    if len(secret_ids) > 64 or not all(isinstance(s, str) and s.startswith("st-") for s in secret_ids):
        raise Invalid("secrets must list at most 64 secret ids (st-...)")
    await _check_secret_scope(request, secret_ids)
    if secret_ids:  # their values go to the sandbox's worker only, after env= (a secret's key wins)
        from vivace.server.services import secrets as secret_svc

        plane = plane_of(request)
        env = {
            **env,
            **await plane.store.read(lambda tx: secret_svc.env_for(tx, plane.secretbox, secret_ids)),
        }
        if any(k.startswith("VIVACE_") for k in env):
            raise Invalid("a sandbox's environment may not set VIVACE_* variables")
    discard = field(body, "discard", list, [], optional=True)
    if not set(discard) <= set(proto.STREAMS):
        raise Invalid(f"discard lists streams ({', '.join(proto.STREAMS)}) whose output is dropped")
    payload = {"type": "sb_exec", "argv": argv, "env": env, "workdir": workdir, "timeout": timeout,
               "discard": sorted(set(discard)), "pty": field(body, "pty", bool, False)}  # fmt: skip
    reply = await _relay(request, payload, [], 60)
    return JSONResponse({"process_id": reply["process_id"]})


def _proc(request: Request) -> str:
    pid = request.path_params["process_id"]
    if pid != proto.MAIN and not (pid.startswith("ex-") and pid[3:].isdigit()):
        raise Invalid(f"no such process id {pid!r}")
    return str(pid)


@route(kinds=USERS)
async def read_process_output(request: Request) -> Response:
    """Bytes of a process's stdout or stderr from ``offset``, waiting up to ``wait`` seconds for some."""
    body = await json_body(request)
    stream = field(body, "stream", str)
    if stream not in proto.STREAMS:
        raise Invalid(f"stream must be one of {', '.join(proto.STREAMS)}")
    offset = field(body, "offset", int)
    wait_s = field(body, "wait", (int, float), 0)
    if offset < 0 or not 0 <= wait_s <= MAX_WAIT:
        raise Invalid(f"offset must be >= 0 and wait 0-{MAX_WAIT:g} seconds")
    payload = {"type": "sb_read", "process_id": _proc(request), "stream": stream, "offset": offset,
               "wait": wait_s, "max": proto.MAX_CHUNK}  # fmt: skip
    reply = await _relay(request, payload, [], wait_s + 30)
    data = reply.get("_data") or [b""]
    return frame_response({k: reply.get(k) for k in ("offset", "eof", "dropped")}, [data[0]])


@route(kinds=USERS)
async def write_process_stdin(request: Request) -> Response:
    """Bytes for a process's stdin at ``offset`` (a retried write is not written twice); ``eof`` closes it."""
    header, blobs = await frame_body(request)
    offset = field(header, "offset", int)
    eof = field(header, "eof", bool, False)
    data = blobs[0] if blobs else b""
    if offset < 0 or len(blobs) > 1 or len(data) > proto.MAX_CHUNK:
        raise Invalid(f"send one payload of at most {proto.MAX_CHUNK} bytes at a non-negative offset")
    payload = {"type": "sb_write", "process_id": _proc(request), "offset": offset, "eof": eof}
    reply = await _relay(request, payload, [data] if data else [], 60)
    return JSONResponse({"offset": reply.get("offset")})


@route(kinds=USERS)
async def wait_process(request: Request) -> Response:
    body = await json_body(request)
    wait_s = field(body, "wait", (int, float), 0)
    if not 0 <= wait_s <= MAX_WAIT:
        raise Invalid(f"wait must be 0-{MAX_WAIT:g} seconds")
    payload = {"type": "sb_wait", "process_id": _proc(request), "wait": wait_s}
    reply = await _relay(request, payload, [], wait_s + 30)
    return JSONResponse({"returncode": reply.get("returncode")})


@route(kinds=USERS)
async def sandbox_filesystem(request: Request) -> Response:
    """One file operation (``protocol.sandboxes.FS_OPS``), run as the sandbox's user inside it."""
    header, blobs = await frame_body(request)
    op = field(header, "op", str)
    if op not in proto.FS_OPS:
        raise Invalid(f"op must be one of {', '.join(proto.FS_OPS)}")
    path = _checked(proto.check_workdir, field(header, "path", str))
    data = blobs[0] if blobs else b""
    if len(blobs) > 1 or len(data) > proto.MAX_FS_CHUNK:
        raise Invalid(f"send at most one payload of {proto.MAX_FS_CHUNK} bytes")
    args = field(header, "args", dict, {})
    if not all(isinstance(v, (int, bool)) for v in args.values()):
        raise Invalid("args must map names to integers or booleans")
    payload = {"type": "sb_fs", "op": op, "path": path, "args": args}
    reply = await _relay(request, payload, [data] if data else [], 90)
    out = reply.get("_data") or [b""]
    return frame_response({"result": reply.get("result")}, [out[0]])


@route(kinds=USERS)
async def snapshot_sandbox(request: Request) -> Response:
    """The sandbox's files as a new image (its image plus a layer of what it changed)."""
    reply = await _relay(request, {"type": "sb_snapshot"}, [], 600)
    digest, size = reply.get("digest"), reply.get("size")
    plane = plane_of(request)
    if not isinstance(digest, str) or not isinstance(size, int) or not plane.blobs.exists(digest):
        raise Conflict("the worker did not store the snapshot", code="snapshot_failed")
    sid = request.path_params["sandbox_id"]
    image_id = await plane.store.write(lambda tx: svc.snapshot_image(tx, sid, digest, size))
    return JSONResponse({"image_id": image_id})


@route(kinds=USERS)
async def sandbox_tunnels(request: Request) -> Response:
    """The sandbox's tunnels: for each port, a URL through this control plane that reaches it, and for
    its ``unencrypted_ports`` an address on this control plane whose connections reach it (``tcp``)."""
    info = await _info(request)
    plane = plane_of(request)
    sid = info["sandbox_id"]
    found = await plane.store.read(lambda tx: svc.tunnels(tx, sid))
    base = str(request.base_url).rstrip("/")
    host = plane.config.tunnel_host
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: the address the client reached us on
        host = request.url.hostname or "127.0.0.1"
    out = {}
    for port, (token, tcp, listen) in found.items():
        out[str(port)] = {"port": port, "url": f"{base}/t/{token}/", "tcp": None}
        if tcp and info["state"] in ("pending", "assigned", "running"):
            opened = await _tcp_tunnels(plane).ensure(token, sid, listen)
            if opened != listen:
                await plane.store.write(functools.partial(svc.set_listen_port, token=token, port=opened))
            out[str(port)]["tcp"] = {"host": host, "port": opened}
    return JSONResponse({"tunnels": out})


def _tcp_tunnels(plane: Any) -> Any:
    from vivace.server.tcp_tunnels import TcpTunnels

    if plane.tcp_tunnels is None:

        async def running(ids: list[str]) -> set[str]:
            return await plane.store.read(functools.partial(svc.running, sandbox_ids=ids))  # type: ignore[no-any-return]

        plane.tcp_tunnels = TcpTunnels(
            plane.config.tunnel_host, functools.partial(_tunnel_target, plane), running
        )
    return plane.tcp_tunnels


async def tunnel_proxy(request: Request) -> Response:
    """``/t/{token}/{path}``: an HTTP request to a sandbox's port, relayed by its worker (which connects
    inside the sandbox's network namespace). The unguessable token is the credential, as a tunnel URL
    is in Modal; the request and response stream through, one connection per request."""
    from vivace.server.api.common import problem
    from vivace.server.api.tunnels import proxy

    try:
        return await proxy(request, lambda r: _tunnel_target(plane_of(r), r.path_params["token"]))
    except ApiError as err:
        return problem(err)


async def _tunnel_target(plane: Any, token: str) -> tuple[Any, str, int]:
    """(the worker's channel, the sandbox's container, the port) for a tunnel's token."""
    sid, port = await plane.store.read(functools.partial(svc.tunnel, token=token))
    info = await _started(plane, await plane.store.read(functools.partial(svc.get, sandbox_id=sid)))
    if info["state"] != "running":
        raise ApiError(f"the tunnel's sandbox is {info['state']}", code="sandbox_not_running", status=502)
    chan = plane.channels.get(info["worker_id"])
    if chan is None:
        raise ChannelError(f"worker {info['worker_id']} has no open channel")
    return chan, str(info["container_id"]), port


ROUTES: list[tuple[str, str, Any, str | None, str, str]] = [
    ("POST", "/v1/sandboxes", create_sandbox, "json", "json", "Create a sandbox"),
    ("GET", "/v1/sandboxes", list_sandboxes, None, "json", "List sandboxes (by app and tags)"),
    ("GET", "/v1/sandboxes/lookup", lookup_sandbox, None, "json", "Find a running sandbox by app and name"),
    ("GET", "/v1/sandboxes/{sandbox_id}", get_sandbox, None, "json", "Describe a sandbox"),
    ("POST", "/v1/sandboxes/{sandbox_id}/wait", wait_sandbox, None, "json", "Long-poll until a sandbox finishes"),
    ("POST", "/v1/sandboxes/{sandbox_id}/terminate", terminate_sandbox, None, "json", "Terminate a sandbox"),
    ("POST", "/v1/sandboxes/{sandbox_id}/snapshot", snapshot_sandbox, None, "json",
     "Save a sandbox's files as an image"),
    ("GET", "/v1/sandboxes/{sandbox_id}/tunnels", sandbox_tunnels, None, "json",
     "URLs that reach the sandbox's ports"),
    ("PUT", "/v1/sandboxes/{sandbox_id}/tags", set_sandbox_tags, "json", "json", "Replace a sandbox's tags"),
    ("POST", "/v1/sandboxes/{sandbox_id}/exec", exec_in_sandbox, "json", "json", "Start a process in a sandbox"),
    ("POST", "/v1/sandboxes/{sandbox_id}/procs/{process_id}/read", read_process_output, "json", "frames",
     "Read a process's output from an offset"),
    ("POST", "/v1/sandboxes/{sandbox_id}/procs/{process_id}/stdin", write_process_stdin, "frames", "json",
     "Write to a process's stdin at an offset"),
    ("POST", "/v1/sandboxes/{sandbox_id}/procs/{process_id}/wait", wait_process, "json", "json",
     "Long-poll a process's exit code"),
    ("POST", "/v1/sandboxes/{sandbox_id}/fs", sandbox_filesystem, "frames", "frames",
     "Read, write, list, stat, make or remove files in a sandbox"),
]  # fmt: skip
