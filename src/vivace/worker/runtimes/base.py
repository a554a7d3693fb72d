"""The ``ContainerRuntime`` port.

A runtime starts ``python -m vivace.runtime`` for one container with the container's socket, source
and environment, reports how it exited (code, OOM, signal), runs commands inside it (exec), and
kills it. Implementations declare what they can enforce in :class:`Capabilities`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vivace.worker.gpus import Gpu
    from vivace.worker.network import NetworkPool


@dataclass(frozen=True)
class Capabilities:
    isolation: bool  # own root filesystem and namespaces
    cpu_limit: bool
    memory_limit: bool
    pids_limit: bool
    network_isolation: bool
    gpu: bool = False
    network_block: bool | None = None  # can give a container loopback only; None: as network_isolation
    volumes: bool = False  # can bind-mount volume directories at any path in the container
    sandboxes: bool = False  # can run a sandbox: its command as the main process, exec with streams

    @property
    def can_block_network(self) -> bool:
        return self.network_isolation if self.network_block is None else self.network_block


@dataclass
class ContainerSpec:
    container_id: str
    workdir: Path  # per-container directory on the worker: socket, source, scratch
    socket_path: Path
    source_dir: Path | None
    env: dict[str, str] = field(default_factory=dict)
    cpu: float = 0.125
    cpu_limit: float | None = None
    memory: int = 128
    memory_limit: int | None = None
    block_network: bool = False
    gpus: list[Gpu] = field(default_factory=list)  # the worker's GPUs this container is given
    image: ImageRootfs | None = None  # None: the worker's base root filesystem
    ephemeral_disk: int | None = None  # MiB: the writable layer is a filesystem of this size
    mounts: list[VolumeBind] = field(default_factory=list)  # volumes, assembled by the worker
    # a sandbox: its main process is this command ([]: an idle process), it has stdin, no vivace socket
    command: list[str] | None = None
    cwd: str | None = None  # the sandbox's working directory (None: the image's)
    cidr_allowlist: list[str] | None = None  # the only destinations it may reach (None: any outside)
    tty: bool = False  # the main process runs on a terminal


@dataclass(frozen=True)
class VolumeBind:
    """A directory of the worker's bind-mounted into the container (a volume's mount)."""

    source: Path
    destination: str
    read_only: bool = False


@dataclass(frozen=True)
class ImageRootfs:
    """A built image as a container sees it: its cached layers and the config its steps set."""

    image_id: str
    layers: list[Path]  # overlayfs lower directories, top first
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    python: str = "/usr/bin/python3"  # the interpreter the runtime runs under
    user: tuple[int, int, str] | None = None  # Dockerfile/registry USER: (uid, gid, home); None: root


@dataclass(frozen=True)
class RuntimeContext:
    """What every runtime on one worker shares."""

    workdir: Path  # the worker's directory (images/, containers/)
    key: str  # short, host-unique name of this worker: its cgroups and namespaces carry it
    pids_limit: int | None = 4096
    network: NetworkPool | None = None  # None: isolated containers get no network at all
    memory_cap: int | None = None  # MiB: all of this worker's containers together (its --memory)

    @property
    def images(self) -> Path:
        return self.workdir / "images"


@dataclass(frozen=True)
class ExitStatus:
    code: int | None
    reason: str  # "exited", "crashed", "oom", "killed"
    exited_at: float | None = None  # time.monotonic() when its process was seen to exit
    cpu_used_s: float | None = None  # the kernel's CPU accounting of its cgroup (None: not measured)
    memory_peak: int | None = None  # its cgroup's peak memory, bytes

    def describe(self) -> str:
        if self.reason == "oom":
            return "out of memory: OOM-killed at its memory limit (exit code 137)"
        return self.reason if self.code is None else f"{self.reason} (exit code {self.code})"


async def wait_process(proc: asyncio.subprocess.Process) -> tuple[int, float]:
    """Wait for ``proc``; return its exit code and when it exited (``time.monotonic()``, to 20 ms).

    asyncio's ``Process.wait`` returns only once the process's pipes are closed too, which may be later
    (a child holding them, output still being read): the exit itself is when its return code is known."""

    async def seen() -> float:
        while proc.returncode is None:
            await asyncio.sleep(0.02)
        return time.monotonic()

    watch = asyncio.ensure_future(seen())
    try:
        code = await proc.wait()
        at = await asyncio.wait_for(asyncio.shield(watch), 0.1) if not watch.done() else watch.result()
    except TimeoutError:
        at = time.monotonic()
    finally:
        watch.cancel()
    return code, at


class ContainerHandle(Protocol):
    pid: int | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    async def wait(self) -> ExitStatus: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class ContainerRuntime(Protocol):
    name: str
    capabilities: Capabilities

    def prepare(self) -> None:
        """Build what starts need (root filesystems), off the start path."""

    def reconcile(self, keep: set[str]) -> list[str]:
        """Remove what containers not in ``keep`` left behind; return what was removed."""

    async def start(self, spec: ContainerSpec) -> ContainerHandle: ...
    async def exec(
        self, spec: ContainerSpec, argv: list[str], timeout: float
    ) -> tuple[int, bytes, bytes]: ...
