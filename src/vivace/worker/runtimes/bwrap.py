"""The ``bwrap`` runtime: bubblewrap containers, for hosts where the worker is not root.

A container is ``bwrap`` around ``python -m vivace.runtime`` with a root of its own: the read-only base
of the oci runtimes (``images.base_rootfs``; bubblewrap cannot mount overlayfs without privileges, so the
base is bound read-only and the writable places are private tmpfs: ``/tmp``, ``/root`` (HOME), ``/run``),
the socket directory read-only at ``/run/vivace``, vivace's runtime bundle and the user's source read-only.
Every container gets new user, pid, ipc, uts, cgroup and mount namespaces, no capabilities (the bounding set
included), ``no_new_privs``, no further user namespaces (``--disable-userns``) and the shared seccomp
profile, compiled to BPF (``seccomp.py``). bubblewrap's options travel through a memfd (``--args``), so
neither the user's environment nor its secrets show on the host's process list, and none of it reaches
bwrap's own environment (no ``LD_PRELOAD`` into a process that runs with privileges).

What else is enforced depends on the host:

* **as root**: a worker-owned cgroup per container exactly as for oci (memory, cpu, pids, OOM reported),
  and the network from the worker's namespace pool (joined before bwrap starts);
* **not root**: limits only where the worker has a delegated cgroup v2 subtree (``Delegate=yes``), else
  none (the capabilities say so, the log says so once, ``vivace doctor`` says so); the host's network,
  shared (no network isolation), except that ``block_network=True`` still gives loopback only.

Containers die with their worker (``PR_SET_PDEATHSIG`` on bwrap, ``--die-with-parent`` inside).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vivace.worker import images
from vivace.worker.cgroups import (
    CgroupError,
    CgroupHost,
    ContainerCgroup,
    Limits,
    claim_subtree,
    delegated_subtree,
    detect,
    leftovers,
)
from vivace.worker.network import Slot
from vivace.worker.runtimes.base import Capabilities, ContainerSpec, ExitStatus, RuntimeContext, wait_process
from vivace.worker.runtimes.nsenter import exec_in
from vivace.worker.runtimes.oci import SOCKET_DIR, SOCKET_IN_CONTAINER
from vivace.worker.runtimes.seccomp import SeccompUnavailable, bpf_program

__all__ = ["BwrapRuntime", "bwrap_args", "container_env", "limits_status", "probe"]

log = logging.getLogger("vivace.worker")

PATH = "/usr/local/bin:/usr/bin:/bin"
PYTHON = "/usr/local/bin/python3"
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def binary() -> str | None:
    return shutil.which("bwrap") or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)


@functools.cache
def probe() -> str | None:
    """Whether bubblewrap can make a user namespace here (as this user): None if so, else why not."""
    exe = binary()
    if exe is None:
        return "'bwrap' is not installed (Debian: apt-get install bubblewrap)"
    try:
        proc = subprocess.run(
            [exe, "--unshare-user", "--ro-bind", "/", "/", "true"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap does not run: {err}"
    if proc.returncode != 0:
        return (
            f"bwrap cannot create a user namespace ({proc.stderr.strip() or proc.returncode}): enable "
            "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 and "
            "user.max_user_namespaces > 0; on Ubuntu 24.04+ an AppArmor profile for bwrap)"
        )
    return None


def container_env(spec: ContainerSpec) -> dict[str, str]:
    """The container's environment: the same rules as ``oci_config`` (no VIVACE_* from the user)."""
    return {
        "PATH": PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": ":".join(([] if spec.source_dir is None else ["/src"]) + [images.RUNTIME_MOUNT]),
        **{k: v for k, v in spec.env.items() if not k.startswith("VIVACE_")},
        "VIVACE_SOCKET": SOCKET_IN_CONTAINER,
        "VIVACE_TASK_ID": spec.container_id,
        "MODAL_TASK_ID": spec.container_id,
    }


def bwrap_args(
    spec: ContainerSpec,
    *,
    base: Path,
    runtime_bundle: Path,
    unshare_net: bool,
    resolv_conf: Path | None = None,
    seccomp_fd: int | None = None,
    home_entries: tuple[str, ...] = (),
    hostname: str = "vivace",
) -> list[str]:
    """bubblewrap's options for one container, up to the command (pure: unit-tested).

    ``home_entries``: what the base holds in ``/root`` (an interpreter installed under the worker's
    home), bound back read-only into the private HOME."""
    args = [
        "--unshare-user", "--uid", "0", "--gid", "0", "--disable-userns",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
        *(["--unshare-net"] if unshare_net else []),
        "--hostname", hostname,
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--ro-bind", str(base), "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--tmpfs", "/root",
    ]  # fmt: skip
    for name in home_entries:
        args += ["--ro-bind", str(base / "root" / name), f"/root/{name}"]
    args += [
        "--tmpfs", "/run",
        "--ro-bind", str(spec.socket_path.parent), SOCKET_DIR,
        "--ro-bind", str(runtime_bundle), images.RUNTIME_MOUNT,
    ]  # fmt: skip
    if spec.source_dir is not None:
        args += ["--ro-bind", str(spec.source_dir), "/src"]
    if resolv_conf is not None:
        args += ["--ro-bind", str(resolv_conf), "/etc/resolv.conf"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    args += ["--chdir", "/root", "--clearenv"]
    for k, v in container_env(spec).items():
        args += ["--setenv", k, v]
    return args


@dataclass(frozen=True)
class Limiting:
    """Where this worker's container cgroups live (None: nowhere, limits are not enforced)."""

    host: CgroupHost
    relroot: str  # "" as root; the delegated subtree otherwise


def _limiting() -> tuple[Limiting | None, str]:
    try:
        host = detect()
    except CgroupError as err:
        return None, str(err)
    if os.geteuid() == 0:
        return Limiting(host, ""), ""
    rel = delegated_subtree(host)
    if rel is None:
        why = "the worker is not root and has no delegated cgroup v2 subtree (systemd Delegate=yes)"
        return None, why
    return Limiting(host, rel), ""


def limits_status() -> str | None:
    """Why bwrap containers are not limited here (None: cpu, memory and pids limits are enforced)."""
    found, why = _limiting()
    return None if found is not None else why


class BwrapHandle:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        runtime: BwrapRuntime,
        cid: str,
        cgroup: ContainerCgroup | None,
        slot: Slot | None,
    ) -> None:
        self.proc = proc
        self.runtime = runtime
        self.cid = cid
        self.cgroup = cgroup
        self.slot = slot
        self.pid: int | None = proc.pid
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self._killed = False
        self.exited_at: float | None = None
        self.usage: tuple[float | None, int | None] = (None, None)

    async def wait(self) -> ExitStatus:
        status = await self._wait()
        return dataclasses.replace(status, exited_at=self.exited_at, cpu_used_s=self.usage[0],
                                   memory_peak=self.usage[1])  # fmt: skip

    async def _wait(self) -> ExitStatus:
        code, self.exited_at = await wait_process(self.proc)
        sigkilled = code in (-signal.SIGKILL, 128 + signal.SIGKILL) and not self._killed
        oom = False
        if self.cgroup is not None:
            oom = await asyncio.to_thread(self.cgroup.oom_killed, sigkilled)
        if self.cgroup is not None:  # before the cleanup removes it
            self.usage = await asyncio.to_thread(self.cgroup.usage)
        await self.runtime.cleanup(self.cid, self.cgroup, self.slot)
        if oom:
            return ExitStatus(137, "oom")
        if code == 0:
            return ExitStatus(0, "exited")
        if code < 0:
            code = 128 - code
        if code in (128 + signal.SIGKILL, 128 + signal.SIGTERM) and self._killed:
            return ExitStatus(code, "killed")
        return ExitStatus(code, "crashed")

    def terminate(self) -> None:
        # the container's processes, not bubblewrap's own: bwrap ending would SIGKILL them at once
        targets = [p for p in _descendants(self.proc.pid) if _comm(p) != "bwrap"]
        for pid in targets or [self.proc.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        self._killed = True
        if self.cgroup is not None:
            self.cgroup.kill_all()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()  # the pid namespace's init dies with bwrap, and everything in it


class BwrapRuntime:
    """bubblewrap behind the ``ContainerRuntime`` port."""

    name = "bwrap"

    def __init__(self, ctx: RuntimeContext, exe: str | None = None) -> None:
        self.ctx = ctx
        self.binary = exe or binary() or "bwrap"
        self.root = os.geteuid() == 0
        self.limiting, self._no_limits = _limiting()
        limited = self.limiting is not None
        # as root without a namespace pool containers get no network at all, as with oci
        self.host_network = not self.root
        self.capabilities = Capabilities(
            isolation=True,
            cpu_limit=limited,
            memory_limit=limited,
            pids_limit=limited,
            network_isolation=not self.host_network,
            network_block=True,  # --unshare-net: loopback only, whatever the host
        )
        self._seccomp: bytes | None = None
        host_resolv = Path("/etc/resolv.conf")  # the host's name servers, for the host's network
        self._host_resolv = host_resolv if host_resolv.exists() else None
        self._running: dict[str, BwrapHandle] = {}

    # -- preparation -----------------------------------------------------------------------------
    def prepare(self) -> None:
        images.base_rootfs(self.ctx.images)
        images.runtime_bundle(self.ctx.images)
        try:
            self._seccomp = bpf_program()
        except (SeccompUnavailable, OSError) as err:
            log.warning("bwrap containers run without a seccomp filter: %s", err)
        if self.limiting is not None and self.limiting.relroot:
            claim_subtree(self.limiting.host, self.limiting.relroot)
        if self.limiting is None:
            log.warning("bwrap: cpu, memory and pids limits are NOT enforced: %s", self._no_limits)
        if self.host_network:
            log.warning("bwrap: containers share the host's network (no network isolation as non-root)")

    def _relroot(self) -> str:
        assert self.limiting is not None
        return "/".join(p for p in (self.limiting.relroot, "vivace", self.ctx.key) if p)

    def _cgroup(self, cid: str) -> ContainerCgroup | None:
        if self.limiting is None:
            return None
        return ContainerCgroup(self.limiting.host, f"{self._relroot()}/{cid}")

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, spec: ContainerSpec) -> BwrapHandle:
        base = images.base_rootfs(self.ctx.images) / "rootfs"
        bundle = images.runtime_bundle(self.ctx.images)
        cgroup = self._cgroup(spec.container_id)
        slot: Slot | None = None
        fds: list[int] = []
        try:
            if cgroup is not None:
                limits = Limits(spec.cpu, spec.cpu_limit, spec.memory, spec.memory_limit, self.ctx.pids_limit)
                await asyncio.to_thread(cgroup.create, limits)
            pool = self.ctx.network
            resolv: Path | None = None
            if self.root and pool is not None and not spec.block_network:
                slot = await pool.acquire(False)
                resolv = self.ctx.workdir / "resolv.conf"
                if not resolv.exists():
                    resolv.write_text(pool.resolv_conf())
            elif self.host_network and not spec.block_network:
                resolv = self._host_resolv
            if self._seccomp is not None:
                fds.append(_memfd("vivace-seccomp", self._seccomp))
            args = bwrap_args(
                spec,
                base=base,
                runtime_bundle=bundle,
                unshare_net=spec.block_network or (slot is None and not self.host_network),
                resolv_conf=resolv,
                seccomp_fd=fds[0] if fds else None,
                home_entries=tuple(sorted(os.listdir(base / "root"))),
            )
            fds.append(_memfd("vivace-bwrap-args", "".join(a + "\0" for a in args).encode()))
            proc = await asyncio.create_subprocess_exec(
                self.binary, "--args", str(fds[-1]), PYTHON, "-m", "vivace.runtime",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}, pass_fds=fds,
                start_new_session=True,
                preexec_fn=functools.partial(_preexec, cgroup, slot.path if slot is not None else None),
            )  # fmt: skip
        except BaseException:
            await self.cleanup(spec.container_id, cgroup, slot)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        handle = BwrapHandle(proc, self, spec.container_id, cgroup, slot)
        self._running[spec.container_id] = handle
        return handle

    async def cleanup(self, cid: str, cgroup: ContainerCgroup | None, slot: Slot | None) -> None:
        self._running.pop(cid, None)
        if cgroup is not None:
            await asyncio.to_thread(cgroup.remove)
        if slot is not None and self.ctx.network is not None:
            await self.ctx.network.release(slot)

    async def exec(self, spec: ContainerSpec, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        handle = self._running.get(spec.container_id)
        if handle is None or handle.pid is None:
            return 125, b"", f"container {spec.container_id} is not running\n".encode()
        return await exec_in(handle.pid, handle.cgroup, container_env(spec), argv, self._seccomp, timeout)

    def reconcile(self, keep: set[str]) -> list[str]:
        """Cgroups of containers a previous run left (their processes died with that worker)."""
        if self.limiting is None:
            return []  # nothing outlives the worker: bwrap dies with it, and the pid namespace with bwrap
        removed = []
        for cid in leftovers(self.limiting.host, self._relroot()):
            if cid in keep:
                continue
            cgroup = self._cgroup(cid)
            if cgroup is not None:
                cgroup.remove()
            removed.append(f"cgroup {cid}")
        for d in ContainerCgroup(self.limiting.host, self._relroot()).dirs():
            with contextlib.suppress(OSError):
                d.rmdir()  # the worker's own (now empty) directory; starts recreate it
        return removed


def _preexec(cgroup: ContainerCgroup | None, netns: str | None) -> None:
    # between fork and exec: bwrap must not outlive the worker, and starts inside the container's
    # cgroup and network namespace, so that everything it creates is there too
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if cgroup is not None:
        cgroup.add_current_process()
    if netns is not None:
        fd = os.open(netns, os.O_RDONLY)
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({netns}) failed")
        os.close(fd)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)  # bwrap gets it (pass_fds) and reads it to the end
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for c in map(int, children):
            found.append(c)
            todo.append(c)
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
