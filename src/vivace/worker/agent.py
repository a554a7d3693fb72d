"""The worker agent: registers, long-polls for containers to start and stop, supervises them,
keeps the channel through which the control plane reaches them, and reconciles after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vivace import exception as exc
from vivace.client import ApiClient, Credentials
from vivace.worker import gpus
from vivace.worker.builder import ImageBuilder
from vivace.worker.channel import run_channel
from vivace.worker.events import EventReporter
from vivace.worker.gpus import Gpu
from vivace.worker.layer_cache import DEFAULT_MAX_GB, LayerCache
from vivace.worker.logs import LogShipper
from vivace.worker.network import NetworkPool, have_tools
from vivace.worker.runtimes import FUNCTION_DEFAULTS, ContainerRuntime, RuntimeContext, available_runtimes
from vivace.worker.runtimes.base import ImageRootfs
from vivace.worker.runtimes.oci import mounted_under, unmount
from vivace.worker.sandboxes import SandboxSupervisor
from vivace.worker.sources import SourceCache
from vivace.worker.supervisor import ContainerSupervisor, socket_path_for

log = logging.getLogger("vivace.worker")

SANDBOX_DEFAULTS = ("runsc", "crun", "runc")  # a sandbox that names no runtime: the first of these here
SANDBOX_RETAIN = 300.0  # seconds a finished sandbox's unread output stays readable
SANDBOX_RETAIN_MAX = 256  # finished sandboxes kept at most
SANDBOX_RETAIN_BYTES = 256 << 20  # their unread output kept at most
LAYER_GC_INTERVAL = 60.0  # seconds between layer cache collections


@dataclass
class WorkerConfig:
    server_url: str
    token: str
    workdir: Path
    name: str
    cpu: float
    memory: int
    runtimes: list[str] | None = None
    labels: dict[str, str] | None = None
    pids_limit: int | None = 4096
    warm_pool: int = 2  # generic containers kept started for the default runtime
    sandbox_pool: int | None = None  # pre-created sandboxes on the default sandbox runtime (None: warm_pool)
    layer_cache_gb: float = DEFAULT_MAX_GB  # unpacked image layers kept beyond this are collected


class Agent:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.api = ApiClient(config.server_url, Credentials.parse(config.token), retry_for=3600)
        key = hashlib.sha256(str(config.workdir.resolve()).encode()).hexdigest()[:10]
        self.network: NetworkPool | None = None
        if os.geteuid() == 0 and not have_tools():
            host = urllib.parse.urlsplit(config.server_url).hostname
            self.network = NetworkPool(
                key,
                size=_env_int("VIVACE_NETNS_POOL", 2),
                control_plane_host=host if host and not _is_loopback(host) else None,
            )
        self.ctx = RuntimeContext(config.workdir, key, config.pids_limit, self.network, config.memory)
        found = available_runtimes(self.ctx)
        if config.runtimes:
            missing = [r for r in config.runtimes if r not in found]
            if missing:
                raise exc.InvalidError(
                    f"runtime(s) {', '.join(missing)} not available here; have {sorted(found)}"
                )
            found = {k: found[k] for k in config.runtimes}
        self.runtimes: dict[str, ContainerRuntime] = found
        self.gpus: list[Gpu] = []
        self.worker_id = ""
        self.containers: dict[str, ContainerSupervisor] = {}
        self.finished: dict[str, tuple[SandboxSupervisor, float]] = {}  # sandbox -> (it, kept until)
        self.starting: set[str] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.logs = LogShipper(self.api)
        self.events = EventReporter(self.api, lambda: self.worker_id)
        self.sources = SourceCache(config.workdir / "sources", self.api)
        self.layer_cache = LayerCache(self.ctx.images, int(config.layer_cache_gb * 1e9))
        self._pinned: dict[str, list[Path]] = {}  # container id -> the layers it runs on
        self.builder = ImageBuilder(self.api, self.ctx.images, key, cache=self.layer_cache)
        self._stopping = asyncio.Event()
        self._gpu_sampled_at = -GPU_SAMPLE

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        previous = self._reconcile()
        self.gpus, how = await asyncio.to_thread(gpus.discover)
        log.info("GPUs: %s (%s)", gpus.describe(self.gpus), how)
        for runtime in self.runtimes.values():
            await asyncio.to_thread(runtime.prepare)
        if self.network is not None and any(r.capabilities.network_isolation for r in self.runtimes.values()):
            await asyncio.to_thread(self.network.setup)
            self.network.kick()
        self._start_warm_pool()
        await self._register(previous)
        bg = [
            asyncio.create_task(c)
            for c in (
                self._poll_loop(),
                self.logs.run(),
                self.events.run(),
                run_channel(self),
                self._stopping.wait(),
                self._build_loop(),
                self._layer_gc_loop(),
            )
        ]
        try:
            done, _ = await asyncio.wait(bg, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            log.info("worker %s shutting down: stopping %d containers", self.worker_id, len(self.containers))
            self.api.retry_for = 2.0  # the control plane may be gone already: don't wait for it
            for sup in list(self.containers.values()):
                sup.kill("worker shutting down")
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=10)
            await self.events.flush(5.0)  # the exits of the containers just stopped: their bills end there
            for t in bg:
                t.cancel()
            for runtime in self.runtimes.values():
                close = getattr(runtime, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(runtime.reconcile, set())
            if self.network is not None:
                with contextlib.suppress(Exception):
                    await self.network.close()
            with contextlib.suppress(Exception):
                await self.logs.flush()
            await self.api.aclose()

    async def _layer_gc_loop(self) -> None:
        """Keep the layer cache under its size: least recently used layers not in use go first."""
        await asyncio.to_thread(self.layer_cache.sweep_trash)
        while True:
            try:
                await self.collect_layers()
            except Exception:  # collection must never take the worker down
                log.exception("layer cache collection failed")
            await asyncio.sleep(LAYER_GC_INTERVAL)

    async def collect_layers(self) -> None:
        in_use: set[Path] = set()
        for runtime in self.runtimes.values():  # warm containers on images run on these layers
            pool = getattr(runtime, "warm", None)
            for image in getattr(pool, "images", {}).values():
                in_use.update(image.layers)
        await asyncio.to_thread(self.layer_cache.collect, in_use)

    async def _build_loop(self) -> None:
        """Build images for the control plane while the worker runs (returns at once where it cannot)."""
        self.builder.worker_id = self.worker_id
        try:
            await self.builder.run()
        except Exception:  # a builder bug must not take the worker down: it just stops building
            log.exception("the image builder stopped")
        await self._stopping.wait()

    async def _image_rootfs(self, image: dict[str, Any]) -> ImageRootfs:
        """The image's layers in this worker's cache (fetched from the blob store when missing)."""
        from vivace.worker.builder import ImageConfig, resolve_user

        wanted = [(layer["key"], layer["digest"]) for layer in image["layers"]]
        wanted += [(f"files-{d}", d) for d in image.get("mounts") or []]  # add_local_*(copy=False): on top
        pinned = [self.builder.layers / key for key, _ in wanted]
        self.layer_cache.pin(pinned)  # before fetching: a collection meanwhile leaves them alone
        try:
            paths = [await self.builder.fetch_layer(key, digest) for key, digest in wanted]
        except BaseException:
            self.layer_cache.unpin(pinned)
            raise
        config = ImageConfig()
        for step, layer in zip(image["steps"], image["layers"], strict=True):
            config.apply(step, layer.get("config"))
        python = config.python or "/usr/bin/python3"
        if not _in_some_layer(paths, python):
            self.layer_cache.unpin(pinned)
            raise exc.InvalidError(
                f"image {image['image_id']} has no Python at {python}: functions need python3 in "
                "/usr/local/bin or /usr/bin (Image.from_registry(..., add_python='3.12') adds one)"
            )
        try:
            user = await asyncio.to_thread(resolve_user, config.user, list(reversed(paths)))
        except exc.ImageBuildError as err:
            self.layer_cache.unpin(pinned)
            raise exc.InvalidError(f"image {image['image_id']}: {err}") from None
        return ImageRootfs(
            image["image_id"],
            list(reversed(paths)),
            dict(config.env),
            config.workdir,
            python=python,
            user=user,
        )

    def default_runtime(self) -> ContainerRuntime:
        names = [n for n in FUNCTION_DEFAULTS if n in self.runtimes] or list(self.runtimes)
        return self.runtimes[names[0]]

    def _start_warm_pool(self) -> None:
        """Warm containers for functions (the default runtime, ``--warm-pool``) and pre-created sandboxes
        (the default sandbox runtime, ``--sandbox-pool``, else ``--warm-pool``)."""
        sandbox_rt = next((self.runtimes[n] for n in SANDBOX_DEFAULTS if n in self.runtimes), None)
        sandboxes = self.config.warm_pool if self.config.sandbox_pool is None else self.config.sandbox_pool
        for runtime, attr, what, size in ((self.default_runtime(), "warm", "containers", self.config.warm_pool),
                                          (sandbox_rt, "sandbox_warm", "sandboxes", sandboxes)):  # fmt: skip
            pool = getattr(runtime, attr, None)
            if runtime is None or pool is None or size <= 0:
                continue
            pool.size = size
            pool.fill()
            log.info("keeping %d warm %s %s", pool.size, runtime.name, what)

    def _reconcile(self) -> str | None:
        """Kill containers left by a previous run of this worker and forget their files."""
        state = self.config.workdir / "state.json"
        previous = None
        if state.exists():
            with contextlib.suppress(ValueError, OSError):
                previous = json.loads(state.read_text()).get("worker_id")
        cdir = self.config.workdir / "containers"
        if cdir.exists():
            for d in cdir.iterdir():
                pidf = d / "pid"
                if pidf.exists():
                    with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                        os.killpg(int(pidf.read_text()), signal.SIGKILL)
                        log.info("reconcile: killed leftover container %s", d.name)
        for runtime in self.runtimes.values():
            for what in runtime.reconcile(set()):
                log.info("reconcile: removed %s", what)
        if self.network is not None:
            for what in self.network.teardown():
                log.info("reconcile: removed %s", what)
        for m in mounted_under(cdir):
            log.info("reconcile: unmounted %s", m)
            unmount(m)
        if cdir.exists():
            for d in cdir.iterdir():
                remove_container_files(d)
        return previous

    async def _register(self, previous: str | None) -> None:
        body = {
            "name": self.config.name,
            "cpu": self.config.cpu,
            "memory": self.config.memory,
            "runtimes": sorted(self.runtimes),
            "labels": self.config.labels or {},
            "replaces": previous,
        }
        if self.gpus:
            body["gpus"] = [g.registration() for g in self.gpus]
        res = await self.api.post_json("/v1/workers", body)
        self.worker_id = res["worker_id"]
        (self.config.workdir / "state.json").write_text(json.dumps({"worker_id": self.worker_id}))
        log.info(
            "worker %s registered (cpu=%g memory=%d MiB runtimes=%s)",
            self.worker_id,
            self.config.cpu,
            self.config.memory,
            ",".join(sorted(self.runtimes)),
        )

    # -- assignments -----------------------------------------------------------------------------
    async def _gpu_stats(self) -> list[dict[str, Any]] | None:
        """Its GPUs' utilization and memory, at most every ``GPU_SAMPLE`` seconds (None: not now)."""
        if not self.gpus or time.monotonic() - self._gpu_sampled_at < GPU_SAMPLE:
            return None
        self._gpu_sampled_at = time.monotonic()
        return await asyncio.to_thread(gpus.sample)

    async def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            body: dict[str, Any] = {
                "held": sorted(self.containers.keys() | self.starting),
                "wait": 10,
                "stopping": [c for c, s in self.containers.items() if s.stop_reason is not None],
            }
            stats = await self._gpu_stats()
            if stats:
                body["gpu_stats"] = stats
            try:
                resp = await self.api.request(
                    "POST", f"/v1/workers/{self.worker_id}/poll", json_body=body, timeout=40
                )
            except exc.NotFoundError as err:  # declared dead (410) or unknown: start over
                log.warning("control plane forgot this worker (%s); re-registering", err)
                for sup in list(self.containers.values()):
                    sup.kill("worker re-registering")
                await self._register(self.worker_id)
                continue
            header, blobs = ApiClient.decode_frames(resp)
            grace = header.get("grace") or {}
            for cid in header.get("stop", []):
                running = self.containers.get(cid)
                if running is not None:
                    self._spawn(running.stop("asked by the control plane", grace.get(cid)))
            for cid, seqs in header.get("cancel", {}).items():
                if cid in self.containers:
                    self.containers[cid].cancel.update(seqs)
            for a in header.get("start", []):
                if a["container_id"] not in self.containers and a["container_id"] not in self.starting:
                    self.starting.add(a["container_id"])
                    definition = blobs[a["definition"]] if a.get("definition") is not None else None
                    self._spawn(self._run_container(a, definition))

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _run_container(self, a: dict[str, Any], definition: bytes | None) -> None:
        cid = a["container_id"]
        try:
            runtime = self._choose_runtime(a["spec"])
            if a.get("gpus") and not runtime.capabilities.gpu:
                raise exc.InvalidError(f"the {runtime.name!r} runtime cannot give a container GPUs")
        except exc.InvalidError as err:
            self.starting.discard(cid)
            self.logs.add(
                a["app_id"], a["function_id"], cid, None, "system", f"container failed to start: {err}"
            )
            self.events.report(cid, "exited", reason=f"failed to start: {err}")
            return
        try:
            return await self._run_started(a, definition, runtime)
        finally:
            self.starting.discard(cid)
            pinned = self._pinned.pop(cid, None)
            if pinned:  # the image's layers were in use while the container ran
                self.layer_cache.unpin(pinned)

    def _choose_runtime(self, spec: dict[str, Any]) -> ContainerRuntime:
        wanted = spec.get("runtime")
        if wanted:
            if wanted not in self.runtimes:
                raise exc.InvalidError(
                    f"runtime {wanted!r} is not offered by this worker ({', '.join(self.runtimes)})"
                )
            runtime = self.runtimes[wanted]
        elif spec.get("sandbox") is not None:  # untrusted code: gVisor where installed, else crun, runc
            names = [n for n in SANDBOX_DEFAULTS if n in self.runtimes]
            if not names:
                raise exc.InvalidError(
                    f"sandboxes run under {', '.join(SANDBOX_DEFAULTS)}; this worker offers "
                    f"{', '.join(self.runtimes)} (Sandbox.create(runtime=...) picks one)"
                )
            runtime = self.runtimes[names[0]]
        else:
            runtime = self.default_runtime()
        if spec.get("sandbox") is not None and not runtime.capabilities.sandboxes:
            raise exc.InvalidError(
                f"the {runtime.name!r} runtime cannot run sandboxes (runsc, crun or runc can)"
            )
        if spec.get("ephemeral_disk") and runtime.name not in ("crun", "runc", "runsc"):
            raise exc.InvalidError(
                f"ephemeral_disk needs a container runtime (crun, runc or runsc); this worker runs "
                f"{runtime.name!r}, whose processes write to the worker's own disk"
            )
        if spec.get("block_network") and not runtime.capabilities.can_block_network:
            raise exc.InvalidError(
                f"block_network=True needs an isolated runtime (crun, runc, runsc, bwrap); this worker runs "
                f"{runtime.name!r}, which cannot block the network"
            )
        return runtime

    async def _run_started(
        self, a: dict[str, Any], definition: bytes | None, runtime: ContainerRuntime
    ) -> None:
        cid = a["container_id"]
        source = None
        try:
            if a["spec"].get("source_hash"):
                source = await self.sources.get(a["spec"]["source_hash"])
            image = await self._image_rootfs(a["image"]) if a.get("image") else None
            image_ready = time.monotonic()
            if image is not None:
                self._pinned[cid] = list(image.layers)
            kind = SandboxSupervisor if a["spec"].get("sandbox") is not None else ContainerSupervisor
            sup = kind(
                assignment=a,
                definition=definition,
                worker_id=self.worker_id,
                api=self.api,
                runtime=runtime,
                workdir=self.config.workdir / "containers" / cid,
                source_dir=source,
                logs=self.logs,
                gpus=self._assigned_gpus(a),
                image=image,
            )
            self.containers[cid] = sup
            await sup.start()
        except Exception as err:
            log.exception("container %s failed to start", cid)
            self.containers.pop(cid, None)
            self.logs.add(
                a["app_id"], a["function_id"], cid, None, "system", f"container failed to start: {err}"
            )
            self.events.report(cid, "exited", reason=f"failed to start: {err}")
            return
        if runtime.name == "process":
            self.logs.add(
                a["app_id"],
                a["function_id"],
                cid,
                None,
                "system",
                "warning: running with the 'process' runtime: no isolation (development only)",
            )
        up = time.monotonic()
        self.events.report(cid, "started", at=up, image_s=round(up - image_ready, 6))
        status = await sup.run()
        self.containers.pop(cid, None)
        if isinstance(sup, SandboxSupervisor):
            self._retain(sup)
        if status.reason != "exited" and not status.reason.startswith("stopped"):
            self.logs.add(
                a["app_id"], a["function_id"], cid, None, "system", f"container {status.describe()}"
            )
        self.events.report(
            cid,
            "exited",
            at=status.exited_at,
            exit_code=status.code,
            reason=status.describe(),
            cpu_used_s=status.cpu_used_s,
            memory_peak=status.memory_peak,
        )

    def _retain(self, sup: SandboxSupervisor) -> None:
        """Keep a finished sandbox's unread output a while: its client may read it after the exit."""
        now = time.monotonic()
        self.finished[sup.id] = (sup, now + SANDBOX_RETAIN)
        for cid, (old, until) in list(self.finished.items()):
            if (
                until < now
                or len(self.finished) > SANDBOX_RETAIN_MAX
                or (
                    sum(s.buffered() for s, _ in self.finished.values()) > SANDBOX_RETAIN_BYTES
                    and old is not sup
                )
            ):
                del self.finished[cid]

    def sandbox(self, cid: str) -> ContainerSupervisor | None:
        """A running container, or a sandbox that finished lately (its output still readable)."""
        sup = self.containers.get(cid)
        if sup is None and cid in self.finished:
            sup = self.finished[cid][0]
        return sup

    def _assigned_gpus(self, a: dict[str, Any]) -> list[Gpu]:
        by_index = {g.index: g for g in self.gpus}
        wanted = a.get("gpus") or []
        unknown = [i for i in wanted if i not in by_index]
        if unknown:
            raise exc.InvalidError(
                f"assigned GPU(s) {unknown} that this worker does not have ({gpus.describe(self.gpus)})"
            )
        return [by_index[i] for i in wanted]


GPU_SAMPLE = 5.0  # seconds between samples of the GPUs' utilization (sent with a poll: /metrics)


def _env_int(name: str, default: int) -> int:
    """A non-negative integer setting from the environment (a bad value is an error, not a default)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise exc.InvalidError(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _in_some_layer(layers: list[Path], path: str) -> bool:
    """Whether some layer has an entry at ``path`` (a file or a link to one: a stat of a few dirs)."""
    return any(os.path.lexists(layer / path.lstrip("/")) for layer in layers)


def remove_container_files(cdir: Path) -> None:
    """A dead container's directory, and its socket's directory where that had to live elsewhere (a
    short path under the temporary directory, when the worker's directory is deep)."""
    shutil.rmtree(cdir, ignore_errors=True)
    sock = socket_path_for(cdir, cdir.name).parent
    if sock != cdir / "sock":
        shutil.rmtree(sock, ignore_errors=True)
