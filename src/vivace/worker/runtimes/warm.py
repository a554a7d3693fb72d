"""The warm pool: containers started ahead of need (no user code, no function yet), so that a
container start is a hand-over. Generic ones on the worker's base, and one per recently started image
on that image's root. Used by the OCI runtimes (``oci.py``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vivace.worker.runtimes.base import ContainerSpec, ImageRootfs

if TYPE_CHECKING:
    from vivace.worker.runtimes.oci import OciHandle, OciRuntime

log = logging.getLogger("vivace.worker")


@dataclass(eq=False)
class WarmContainer:
    name: str
    dir: Path
    handle: OciHandle
    proc: asyncio.subprocess.Process
    image: tuple[str, ...] | None = None  # image_key of the root it runs on; None: the worker's base


def image_key(image: ImageRootfs | None) -> tuple[str, ...] | None:
    """What a warm container must share with a container spec to serve it: the same layers (attached
    files included), interpreter, environment and working directory."""
    if image is None:
        return None
    env = tuple(f"{k}={v}" for k, v in sorted(image.env.items()))
    return (image.image_id, image.python, image.workdir, str(image.user), *map(str, image.layers), *env)


class WarmPool:
    """Generic containers started ahead of need, so that a container start is a hand-over.

    A warm container has its root mounted, its cgroup, its network slot and a Python that has
    imported vivace; it waits on stdin. Taking one writes the function's limits to its cgroup, links the
    function's source into its ``/src``, and sends it its environment; it then runs exactly like a
    container started cold. Each is used once. ``size`` is the number kept ready (``vivace worker
    --warm-pool N``); containers that need what a warm one lacks (``block_network``, a memory limit below
    what it already uses) start cold.

    Images: once a container of an image started on this worker, one warm container on that image's
    root is kept as well (while ``size`` > 0), for the :data:`IMAGES_KEPT` most recently started
    images; an image whose warm container fails to start is dropped from the list.
    """

    IMAGES_KEPT = 4

    MEMORY_MARGIN = 16 << 20  # headroom a function's memory limit must leave above a warm container's use
    RETRY_AFTER = 5.0
    READY_TIMEOUT = 60.0
    REFILL_DELAY = 0.5  # a replacement starts once the container just handed over is up, not beside it
    MAX_STARTING = 4  # warm starts in progress at once: a large pool fills without stalling the worker

    def __init__(self, runtime: OciRuntime, size: int = 0, *, sandbox: bool = False) -> None:
        self.runtime = runtime
        self.size = size
        self.sandbox = sandbox  # sandboxes' pool: a stub that execs the sandbox's command (base root only)
        self.ready: list[WarmContainer] = []
        self._filling: collections.Counter[tuple[str, ...] | None] = collections.Counter()
        self.images: collections.OrderedDict[tuple[str, ...], ImageRootfs] = collections.OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failed_at = 0.0

    def take(self, spec: ContainerSpec) -> WarmContainer | None:
        if spec.block_network and self.runtime.ctx.network is not None:
            return None  # warm containers hold an open network slot
        if spec.gpus:
            return None  # devices are fixed when a container is created
        if spec.ephemeral_disk:
            return None  # a warm container's writable layer is on the worker's disk
        if spec.mounts:
            return None  # volumes are bind-mounted when a container is created
        key = image_key(spec.image)
        if self.sandbox and (spec.image is not None or spec.tty):
            return None  # sandboxes on images start cold (their pool keeps the worker's base only)
        if spec.image is not None and key is not None and self.size > 0:
            self._remember(key, spec.image)
        for i, warm in enumerate(self.ready):
            if warm.proc.returncode is not None or warm.image != key:
                continue  # died (its watcher removes it), or on another root
            if spec.memory_limit is not None:
                used = warm.handle.cgroup.memory_usage()
                if used is None or used + self.MEMORY_MARGIN > spec.memory_limit << 20:
                    return None
            del self.ready[i]
            self._spawn(self._refill_later(self.REFILL_DELAY))
            return warm
        self.fill()
        return None

    def _remember(self, key: tuple[str, ...], image: ImageRootfs) -> None:
        self.images[key] = image
        self.images.move_to_end(key)
        while len(self.images) > self.IMAGES_KEPT:
            old, _ = self.images.popitem(last=False)
            self._drop(old)

    def _drop(self, key: tuple[str, ...]) -> None:
        """Forget an image: discard its warm containers."""
        self.images.pop(key, None)
        for warm in [w for w in self.ready if w.image == key]:
            self.ready.remove(warm)
            self._spawn(_discard(warm))

    def fill(self, *, retrying: bool = False) -> None:
        """Start what the pool lacks; after a failed start, only a retry (``retrying``) does, once
        ``RETRY_AFTER`` has passed."""
        if self._closed or (not retrying and time.monotonic() - self._failed_at < self.RETRY_AFTER):
            return
        wanted: list[tuple[tuple[str, ...] | None, int]] = [(None, self.size)]
        wanted += [(key, 1) for key in self.images] if self.size > 0 and not self.sandbox else []
        for key, count in wanted:
            while (sum(w.image == key for w in self.ready) + self._filling[key] < count
                   and sum(self._filling.values()) < self.MAX_STARTING):  # fmt: skip
                self._filling[key] += 1
                self._spawn(self._make(key, self.images.get(key) if key is not None else None))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _make(self, key: tuple[str, ...] | None = None, image: ImageRootfs | None = None) -> None:
        started = time.monotonic()
        try:
            warm = await (
                self.runtime.start_warm(image, sandbox=True)
                if self.sandbox
                else self.runtime.start_warm(image)
            )
            await self._until_ready(warm)
        except Exception as err:
            if image is not None and key is not None:  # this image's fault, not the pool's
                log.warning("could not start a warm %s container on image %s (not trying again): %s",
                            self.runtime.name, image.image_id, err)  # fmt: skip
                self._drop(key)
                return
            self._failed_at = time.monotonic()
            log.warning("could not start a warm %s container (retrying in %gs): %s",
                        self.runtime.name, self.RETRY_AFTER, err)  # fmt: skip
            self._spawn(self._refill_later())
            return
        finally:
            self._filling[key] -= 1
        if self._closed or (key is not None and key not in self.images):
            await _discard(warm)
            return
        self.ready.append(warm)
        on = f" on image {image.image_id}" if image is not None else ""
        log.info("warm %s container %s ready%s in %.0f ms", self.runtime.name, warm.name, on,
                 (time.monotonic() - started) * 1000)  # fmt: skip
        self._spawn(self._watch(warm))
        self.fill()  # the next, if the pool is not full yet

    async def _until_ready(self, warm: WarmContainer) -> None:
        """Its runtime says so on stdout once it has imported what it needs; anything else is a failure."""
        from vivace.runtime.main import WARM_READY

        stdout = warm.handle.stdout
        assert stdout is not None
        try:
            line = await asyncio.wait_for(stdout.readline(), self.READY_TIMEOUT)
        except BaseException:
            await _discard(warm)
            raise
        if line.decode(errors="replace").rstrip("\n") != WARM_READY:
            err = b""
            if warm.handle.stderr is not None:
                with contextlib.suppress(Exception):
                    err = await asyncio.wait_for(warm.handle.stderr.read(2000), 1)
            await _discard(warm)
            raise RuntimeError(f"it did not start: {(line + err).decode(errors='replace').strip()[-500:]}")

    async def _refill_later(self, delay: float | None = None) -> None:
        # the loop may wake a timer a clock tick early: a retry must not find itself still throttled
        await asyncio.sleep(self.RETRY_AFTER if delay is None else delay)
        self.fill(retrying=delay is None)

    async def _watch(self, warm: WarmContainer) -> None:
        await warm.proc.wait()
        if warm in self.ready:  # died before anyone took it
            self.ready.remove(warm)
            err = b""
            if warm.handle.stderr is not None:
                with contextlib.suppress(Exception):
                    err = await asyncio.wait_for(warm.handle.stderr.read(4096), 1)
            status = await warm.handle.wait()
            if not self._closed:
                log.warning("warm %s container %s %s: %s", self.runtime.name, warm.name,
                            status.describe(), err.decode(errors="replace").strip()[-500:])  # fmt: skip
                self._failed_at = time.monotonic()
                self._spawn(self._refill_later())

    async def close(self, also: list[WarmContainer] = ()) -> None:  # type: ignore[assignment]
        self._closed = True
        victims = [*self.ready, *also]
        self.ready.clear()
        await asyncio.gather(*(_discard(w) for w in victims), return_exceptions=True)
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        # starts in progress clean up after themselves (crun delete, unmount): let them finish before
        # the worker's final reconciliation, or they would recreate what it removed
        await asyncio.gather(*tasks, return_exceptions=True)


async def _discard(warm: WarmContainer) -> None:
    warm.handle.kill()
    await warm.handle.wait()
