"""One container's life on a worker: its socket, its process, its logs, and how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vivace import exception as exc
from vivace._version import __version__
from vivace.client import ApiClient
from vivace.protocol import frames
from vivace.protocol.versions import CONTAINER_HEADER, check_compatible
from vivace.worker.gpus import Gpu
from vivace.worker.httpd import HttpRequest, HttpResponse, UnixHttpServer
from vivace.worker.logs import LogShipper
from vivace.worker.runtimes.base import (
    ContainerHandle,
    ContainerRuntime,
    ContainerSpec,
    ExitStatus,
    ImageRootfs,
    VolumeBind,
)
from vivace.worker.volumes import VolumeMount

log = logging.getLogger("vivace.worker")
STOP_GRACE = 5.0
FORWARD_TIMEOUT = 120.0  # long-polls from the container wait up to 60 s
HEARTBEAT_TIMEOUT = 30.0


def heartbeat_timeout() -> float:
    """Seconds of heartbeat silence after which a container counts as frozen (runtime beats every 1 s)."""
    raw = os.environ.get("VIVACE_CONTAINER_HEARTBEAT_TIMEOUT")
    try:
        return max(2.0, float(raw)) if raw else HEARTBEAT_TIMEOUT
    except ValueError:
        return HEARTBEAT_TIMEOUT


def socket_path_for(workdir: Path, container_id: str) -> Path:
    """The container's socket, alone in its directory (isolated runtimes mount that directory).

    Unix socket paths are limited to 107 bytes: keep them short whatever the worker's directory."""
    path = workdir / "sock" / "vivace.sock"
    if len(str(path)) < 100:
        return path
    short = Path(tempfile.gettempdir()) / f"vivace-{os.getuid()}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / container_id / "vivace.sock"


class ContainerSupervisor:
    def __init__(
        self,
        *,
        assignment: dict[str, Any],
        definition: bytes | None,
        worker_id: str,
        api: ApiClient,
        runtime: ContainerRuntime,
        workdir: Path,
        source_dir: Path | None,
        logs: LogShipper,
        gpus: list[Gpu] | None = None,
        image: ImageRootfs | None = None,
        volume_cache: Path | None = None,
    ) -> None:
        self.id: str = assignment["container_id"]
        self.app_id: str = assignment["app_id"]
        self.function_id: str = assignment["function_id"]
        self.token: str = assignment["lease_token"]
        self.fspec: dict[str, Any] = assignment["spec"]
        self.definition = definition
        self.worker_id = worker_id
        self.api = api
        self.runtime = runtime
        self.logs = logs
        self.spec = ContainerSpec(
            container_id=self.id,
            workdir=workdir,
            socket_path=socket_path_for(workdir, self.id),
            source_dir=source_dir,
            # a function's secrets (values sent in this assignment only) apply after its env=: they win
            env={**(self.fspec.get("env") or {}), **(assignment.get("secret_env") or {})},
            cpu=self.fspec["cpu"],
            cpu_limit=self.fspec.get("cpu_limit"),
            memory=self.fspec["memory"],
            memory_limit=self.fspec.get("memory_limit"),
            block_network=bool(self.fspec.get("block_network")),
            gpus=list(gpus or []),
            image=image,
            ephemeral_disk=self.fspec.get("ephemeral_disk"),
            mounts=[
                VolumeBind(workdir / "volumes" / str(n), path, bool(ref["read_only"]))
                for n, (path, ref) in enumerate(sorted((self.fspec.get("volumes") or {}).items()))
            ],
        )
        self.volume_cache = volume_cache or workdir.parent.parent / "volume-cache"
        self.volumes: dict[str, VolumeMount] = {}  # volume id -> its mount (one mount per volume)
        self.handle: ContainerHandle | None = None
        self.cancel: set[int] = set()
        self.current: int | None = None
        self.stop_reason: str | None = None
        self.last_heartbeat = time.monotonic()
        self.heartbeats = 0  # the watchdog starts once the runtime is up and beating
        self._server: UnixHttpServer | None = None
        self._exchange_path = f"/v1/workers/{worker_id}/containers/{self.id}/exchange"

    async def start(self) -> None:
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        reserve = getattr(self.runtime, "reserve", None)
        if reserve is not None:  # a warm container may take this one: it decides where the socket is
            reserve(self.spec)
        self.spec.socket_path.parent.mkdir(mode=0o755, exist_ok=True)
        self._server = UnixHttpServer(str(self.spec.socket_path), self._handle)
        await self._server.start()
        try:
            await self._mount_volumes()
            self.handle = await self.runtime.start(self.spec)
        except BaseException:
            for mount in self.volumes.values():  # never started: nothing of its to commit
                shutil.rmtree(mount.root, ignore_errors=True)
            await self._server.close()
            raise
        (self.spec.workdir / "pid").write_text(str(self.handle.pid))

    async def run(self) -> ExitStatus:
        assert self.handle is not None
        pumps = [
            asyncio.create_task(self._pump(s, name))
            for s, name in ((self.handle.stdout, "stdout"), (self.handle.stderr, "stderr"))
            if s is not None
        ]
        watchdog = asyncio.create_task(self._watch_heartbeats())
        status = await self.handle.wait()
        if status.exited_at is None:  # when its process exited, not after the pumps and unmounts below
            status = dataclasses.replace(status, exited_at=time.monotonic())
        watchdog.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*pumps), 2)
        if self._server is not None:
            await self._server.close()
        await self._unmount_volumes()
        shutil.rmtree(self.spec.workdir, ignore_errors=True)
        shutil.rmtree(self.spec.socket_path.parent, ignore_errors=True)
        if self.stop_reason is not None:  # we asked it to stop: however it ended, that is why
            return dataclasses.replace(status, reason="stopped: " + self.stop_reason)
        return status

    async def _watch_heartbeats(self) -> None:
        """A runtime whose heartbeat thread went silent is frozen (stopped, deadlocked in C, swapping):
        kill it so that its inputs go back to the queue instead of waiting for their timeouts."""
        timeout = heartbeat_timeout()
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            if self.heartbeats and time.monotonic() - self.last_heartbeat > timeout:
                log.warning("container %s sent no heartbeat for %.0f s; killing it", self.id, timeout)
                self.logs.add(
                    self.app_id,
                    self.function_id,
                    self.id,
                    None,
                    "system",
                    f"container sent no heartbeat for {timeout:g} s and was killed",
                )
                self.kill(f"no heartbeat for {timeout:g} s")
                return

    async def stop(self, reason: str, grace: float | None = None) -> None:
        """SIGTERM (the container finishes its running inputs, takes no new ones), then SIGKILL after
        ``grace`` seconds (default ``STOP_GRACE``; a redeploy drains: the function's timeout)."""
        if self.handle is None or self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.handle.terminate()
        wait = STOP_GRACE if grace is None else max(STOP_GRACE, min(float(grace), 86400.0))
        proc = getattr(
            self.handle, "proc", None
        )  # its process (waiting on it twice is safe; handle.wait cleans up)
        if proc is None:
            await asyncio.sleep(wait)
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), wait)
        self.handle.kill()

    def kill(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        if self.handle is not None:
            self.handle.kill()

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        while True:
            line = await stream.readline()
            if not line:
                return
            self.logs.add(
                self.app_id,
                self.function_id,
                self.id,
                self.current,
                name,
                line.decode("utf-8", "replace").rstrip("\n"),
            )

    # -- volumes ---------------------------------------------------------------------------------
    async def _mount_volumes(self) -> None:
        """Assemble each volume's directory from its latest version (before the container starts)."""
        if not self.spec.mounts:
            return
        if not self.runtime.capabilities.volumes:
            raise RuntimeError(
                f"the {self.runtime.name!r} runtime cannot mount volumes; run the worker with crun, runc "
                "or runsc (vivace worker --runtime)"
            )
        owner_of = getattr(self.runtime, "volume_owner", None)
        owner = owner_of(self.spec) if owner_of is not None else None
        refs = sorted((self.fspec.get("volumes") or {}).items())
        for bind, (_, ref) in zip(self.spec.mounts, refs, strict=True):
            mount = VolumeMount(
                self.api,
                ref["id"],
                bind.source,
                read_only=bind.read_only,
                cache=self.volume_cache,
                owner=owner,
            )
            self.volumes[ref["id"]] = mount
            line = await mount.prepare()
            log.info("container %s: %s", self.id, line)
            self.logs.add(self.app_id, self.function_id, self.id, None, "system", line)

    async def _unmount_volumes(self) -> None:
        """The container has exited: commit what it wrote to each writable volume."""
        for vid, mount in self.volumes.items():
            try:
                await mount.close()
            except Exception as err:  # the volume keeps its last committed version
                log.error("container %s: could not commit volume %s on exit: %s", self.id, vid, err)
                self.logs.add(
                    self.app_id,
                    self.function_id,
                    self.id,
                    None,
                    "system",
                    f"could not commit volume {vid} when the container exited: {err}",
                )

    async def _volume_request(self, vid: str, action: str) -> HttpResponse | None:
        """``Volume.commit()``/``reload()`` from the container, for a volume mounted here (else None)."""
        mount = self.volumes.get(vid)
        if mount is None:
            return None
        try:
            version = await (mount.commit() if action == "commit" else mount.reload())
        except exc.Error as err:
            return HttpResponse(getattr(err, "status", None) or 502, str(err).encode(), "text/plain")
        except OSError as err:
            return HttpResponse(500, f"volume {vid}: {err}".encode(), "text/plain")
        return HttpResponse(200, json.dumps({"version": version}).encode(), "application/json")

    # -- the container socket --------------------------------------------------------------------
    async def _handle(self, req: HttpRequest) -> HttpResponse:
        if req.path == "/exchange" and req.method == "POST":
            return await self._exchange(req.body)
        if req.path == "/heartbeat" and req.method == "POST":
            self.last_heartbeat = time.monotonic()
            self.heartbeats += 1
            body = json.dumps({"cancel": sorted(self.cancel), "stop": self.stop_reason is not None})
            return HttpResponse(200, body.encode(), "application/json")
        if req.path == "/hello" and req.method == "GET":
            problem = check_compatible(req.headers.get("x-vivace-version"), "the container runtime")
            if problem:
                return HttpResponse(409, problem.encode(), "text/plain")
            info = {
                "container_id": self.id,
                "function_id": self.function_id,
                "app_id": self.app_id,
                "spec": self.fspec,
                "has_definition": self.definition is not None,
                "version": __version__,
            }
            return HttpResponse(200, json.dumps(info).encode(), "application/json")
        if req.path == "/definition" and req.method == "GET":
            return HttpResponse(200, self.definition or b"")
        if req.path.startswith("/api/v1/volumes/") and req.method == "POST":
            parts = req.path.split("/")  # ['', 'api', 'v1', 'volumes', <id>, 'mount', <action>]
            if len(parts) == 7 and parts[5] == "mount" and parts[6] in ("commit", "reload"):
                answer = await self._volume_request(parts[4], parts[6])
                if answer is not None:
                    return answer
        if req.path.startswith("/api/v1/"):
            return await self._forward(req)
        return HttpResponse(404, b"not found", "text/plain")

    async def _forward(self, req: HttpRequest) -> HttpResponse:
        """The container's own API calls (other functions, lookups): sent on with this worker's token
        and the container's id; the control plane acts with the container's app scope, never the worker's.
        The container's own headers, except its content type, are dropped."""
        headers = {CONTAINER_HEADER: self.id}
        if "content-type" in req.headers:
            headers["content-type"] = req.headers["content-type"]
        try:
            resp = await self.api._http.request(
                req.method,
                req.path[len("/api") :],
                content=req.body,
                headers=headers,
                timeout=FORWARD_TIMEOUT,
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
            return HttpResponse(503, f"the control plane is unreachable: {err}".encode(), "text/plain")
        ctype = resp.headers.get("content-type", "application/octet-stream")
        return HttpResponse(resp.status_code, resp.content, ctype)

    async def _exchange(self, body: bytes) -> HttpResponse:
        try:
            header, blobs = frames.decode(body)
        except frames.FrameError as err:
            return HttpResponse(400, str(err).encode(), "text/plain")
        header["token"] = self.token
        self.current = None
        retried = False
        deadline = time.monotonic() + 120
        while True:
            try:
                resp = await self.api.post_frames(
                    self._exchange_path, header, blobs, retry_for=0, timeout=float(header.get("wait", 0)) + 30
                )
                break
            except exc.ServiceError as err:
                if time.monotonic() > deadline or self.stop_reason is not None:
                    return HttpResponse(503, str(err).encode(), "text/plain")
                # the response may have been lost after a lease was recorded: the control plane releases
                # leases the container does not hold (the runtime lists what it holds in "held")
                header["retry"] = True
                retried = True
                await asyncio.sleep(0.2)
            except exc.NotFoundError as err:  # includes 410: the lease is gone
                return HttpResponse(410, str(err).encode(), "text/plain")
            except exc.Error as err:
                return HttpResponse(400, str(err).encode(), "text/plain")
        if retried:
            log.info("container %s: exchange went through after the control plane came back", self.id)
        rh, _ = frames.decode(resp.content)
        self.cancel.update(rh.get("cancel", []))
        inputs = rh.get("inputs", [])
        if len(inputs) == 1 and not header.get("exact"):  # log lines belong to this input
            self.current = inputs[0]["seq"]
        return HttpResponse(200, resp.content, frames.CONTENT_TYPE)
