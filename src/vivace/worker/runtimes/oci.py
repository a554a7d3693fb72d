"""The ``oci`` runtimes: crun, runc and gVisor's runsc, driven through one OCI bundle.

Per container the worker makes ``<container dir>/bundle``: ``rootfs`` is an overlay of the read-only
base (``images.py``) with a private writable layer, and ``config.json`` names exactly what the
container sees: its socket (read-only bind at ``/run/vivace/vivace.sock``), the user's source
(read-only at ``/src``), vivace's runtime bundle (read-only at ``/opt/vivace/runtime``), and nothing
else of the host. Limits live on a cgroup the worker owns (``cgroups.py``); the OCI runtime creates
its child ``ctr`` inside it.

On a hybrid cgroup host crun refuses to run ("cgroups in hybrid mode not supported"). Such a host is
treated as v1: crun is started in a private mount namespace with the controller-less cgroup2 mount
detached, which changes nothing on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vivace.worker import gpus, idmap, images
from vivace.worker.cgroups import CgroupHost, ContainerCgroup, Limits, cap_memory, detect, leftovers
from vivace.worker.network import Slot
from vivace.worker.runtimes.base import (
    Capabilities,
    ContainerSpec,
    ExitStatus,
    ImageRootfs,
    RuntimeContext,
    wait_process,
)
from vivace.worker.runtimes.oci_sandbox import SandboxOps, sandbox_stub
from vivace.worker.runtimes.security import MASKED_PATHS, READONLY_PATHS, seccomp_profile
from vivace.worker.runtimes.warm import WarmContainer, WarmPool, image_key

log = logging.getLogger("vivace.worker")

SOCKET_DIR = "/run/vivace"
SOCKET_IN_CONTAINER = SOCKET_DIR + "/vivace.sock"
PATH = "/usr/local/bin:/usr/bin:/bin"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# in an image the runtime bundle comes after the image's site-packages, so a user's pinned version of a
# package the runtime also uses (cloudpickle) wins
_BOOT = (
    "import runpy, sys; sys.path[:] = [p for p in sys.path if p]; sys.path.append({mount!r}); "
    "runpy.run_module('vivace.runtime', run_name='__main__', alter_sys=True)"
)


def _cwd(image: ImageRootfs | None) -> str:
    if image is not None and image.workdir != "/":
        return image.workdir
    return image.user[2] if image is not None and image.user else "/root"


def image_args(image: ImageRootfs) -> list[str]:
    return [image.python, "-c", _BOOT.format(mount=images.RUNTIME_MOUNT)]


# a sandbox created without a command idles in this (its interpreter is the image's); SIGTERM ends it
_IDLE = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"
BASE_PYTHON = "/usr/local/bin/python3"
FS_HELPER = images.RUNTIME_MOUNT + "/vivace/runtime/sandbox_fs.py"


def python_of(spec: ContainerSpec) -> str:
    return spec.image.python if spec.image is not None else BASE_PYTHON


def _process_args(spec: ContainerSpec) -> list[str]:
    if spec.command is not None:  # a sandbox
        return list(spec.command) or [python_of(spec), "-I", "-S", "-c", _IDLE]
    return [BASE_PYTHON, "-m", "vivace.runtime"] if spec.image is None else image_args(spec.image)


SANDBOX_OVERLAY = "redirect_dir=off,metacopy=off"
PR_SET_PDEATHSIG = 1
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def mount_overlay(lower: list[Path], upper: Path, work: Path, target: Path, options: str = "") -> None:
    """``lower`` top first; ``options``: more overlay options, comma-separated (image builds use some)."""
    opts = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
    if options:
        opts += "," + options
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, opts.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount the container's root filesystem: {os.strerror(err)}")


def unmount(target: Path) -> None:
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT
            raise OSError(err, f"cannot unmount {target}: {os.strerror(err)}")


def make_disk(image: Path, mountpoint: Path, mib: int) -> None:
    """A fresh ext4 filesystem of ``mib`` MiB mounted at ``mountpoint``, in a sparse file (ext4 here has
    no project quotas, so a size limit is a filesystem of that size). The file is unlinked once
    mounted: the loop device holds it, and it is gone with the mount (``autoclear``), crash or not."""
    import subprocess

    with image.open("wb") as f:
        f.truncate(mib << 20)
    try:
        for argv in (
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
             "-E", "lazy_itable_init=1,nodiscard", str(image)],
            ["mount", "-o", "loop,nosuid,nodev", str(image), str(mountpoint)],
        ):  # fmt: skip
            if argv[0] == "mount":
                mountpoint.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                raise OSError(f"ephemeral disk: {argv[0]} failed: {proc.stderr.strip()[-300:]}")
    finally:
        image.unlink(missing_ok=True)


def mounted_under(prefix: Path) -> list[Path]:
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(str(prefix) + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: -len(str(p)))


def oci_config(
    spec: ContainerSpec,
    *,
    cgroups_path: str,
    runtime_bundle: Path,
    netns: str | None,
    rlimit_nofile: int,
    resolv_conf: Path | None = None,
    hostname: str = "vivace",
    warm: bool = False,
    gpu: dict[str, Any] | None = None,
    userns: bool = False,
    root_path: str = "rootfs",
    tmp_bind: Path | None = None,
) -> dict[str, Any]:
    """The OCI runtime spec for one container (pure: unit-tested).

    ``warm``: a generic container for the warm pool; its runtime starts, imports what every container
    needs, and waits on stdin for the function it will serve (:class:`WarmPool`)."""
    image = spec.image
    sandbox = spec.command is not None  # no vivace socket, no vivace on its Python's path
    search = ([] if spec.source_dir is None else ["/src"]) + ([] if image else [images.RUNTIME_MOUNT])
    if sandbox:
        search = []
    env = {
        "PATH": PATH if image is None else IMAGE_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        **({} if image is None else image.env),
        "PYTHONPATH": ":".join(search),
        **{k: v for k, v in spec.env.items() if not k.startswith("VIVACE_")},
        "VIVACE_SOCKET": SOCKET_IN_CONTAINER,
        "VIVACE_TASK_ID": spec.container_id,
        "MODAL_TASK_ID": spec.container_id,
    }
    if sandbox:
        del env["VIVACE_SOCKET"]
    if warm and not sandbox:
        env["VIVACE_WARM"] = "1"
    user = image.user if image is not None else None
    if user is not None:
        env["HOME"] = user[2]
    if gpu is not None:  # gpus.oci_gpu_config: exactly the assigned GPUs, the driver's files
        env.update(gpu["env"])
        env["PATH"] = PATH + ":" + gpus.DRIVER_BIN_DIR
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": images.RUNTIME_MOUNT, "type": "bind", "source": str(runtime_bundle),
         "options": ["rbind", "ro", "nosuid", "nodev"]},
    ]  # fmt: skip
    if not sandbox:  # a sandbox has no API access at all
        mounts.insert(6,
            {"destination": SOCKET_DIR, "type": "bind", "source": str(spec.socket_path.parent),
             "options": ["bind", "ro", "nosuid", "nodev", "noexec"]},
        )  # fmt: skip
    if spec.source_dir is not None:
        mounts.append(
            {"destination": "/src", "type": "bind", "source": str(spec.source_dir),
             "options": ["rbind", "ro", "nosuid", "nodev"]}
        )  # fmt: skip
    for bind in spec.mounts:  # volumes: directories the worker assembled
        mounts.append(
            {"destination": bind.destination, "type": "bind", "source": str(bind.source),
             "options": ["rbind", "ro" if bind.read_only else "rw", "nosuid", "nodev"]}
        )  # fmt: skip
    if (
        tmp_bind is not None
    ):  # runsc mounts a tmpfs of its own at /tmp otherwise (memory, past any disk limit)
        mounts.append(
            {
                "destination": "/tmp",
                "type": "bind",
                "source": str(tmp_bind),
                "options": ["rbind", "rw", "nosuid", "nodev"],
            }
        )
    if resolv_conf is not None:
        mounts.append(
            {"destination": "/etc/resolv.conf", "type": "bind", "source": str(resolv_conf),
             "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}
        )  # fmt: skip
    if userns and netns:  # sysfs may only be mounted by the user namespace that owns the network one
        for m in mounts:
            if m["destination"] == "/sys":
                m.update(type="bind", source="/sys", options=["rbind", "ro", "nosuid", "noexec", "nodev"])
    if gpu is not None:
        mounts += gpu["mounts"]
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    if userns:  # root inside is idmap.HOST_BASE outside (the root filesystem is idmapped to match)
        namespaces.append({"type": "user"})
    linux: dict[str, Any] = {
        "cgroupsPath": cgroups_path,
        "namespaces": namespaces,
        "seccomp": seccomp_profile(),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if userns:
        linux["uidMappings"] = idmap.mappings()
        linux["gidMappings"] = idmap.mappings()
    if gpu is not None and gpu["devices"]:
        linux["devices"] = gpu["devices"]
        # deny every device, then allow these; the runtime adds the standard ones (null, zero, tty, ...)
        linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}, *gpu["device_rules"]]}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": user[0], "gid": user[1]} if user else {"uid": 0, "gid": 0},
            "args": _process_args(spec),
            "env": [f"{k}={v}" for k, v in env.items() if k != "PYTHONPATH" or v],
            "cwd": spec.cwd or _cwd(image),
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": rlimit_nofile, "soft": rlimit_nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": root_path, "readonly": False},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }


_pending: set[asyncio.Task[Any]] = set()  # runsc kill commands in flight


class OciHandle:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        runtime: OciRuntime,
        cgroup: ContainerCgroup,
        bundle: Path,
        cid: str,
        slot: Slot | None,
    ) -> None:
        self.slot = slot
        self.proc = proc
        self.runtime = runtime
        self.cgroup = cgroup
        self.bundle = bundle
        self.cid = cid
        self.pid: int | None = proc.pid
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self._killed = False
        self.exited_at: float | None = None
        self.usage: tuple[float | None, int | None] = (None, None)
        self.on_exit: Callable[[], object] | None = None
        self.process: dict[str, Any] = {}  # its OCI process: what an exec'd process inherits
        self.created = False  # known to exist in the runtime's state (a warm container handed over)
        self.tty_master: int | None = None  # the main process's terminal (Sandbox.create(pty=True))
        self._execs = 0

    async def wait(self) -> ExitStatus:
        status = await self._wait()
        return dataclasses.replace(status, exited_at=self.exited_at, cpu_used_s=self.usage[0],
                                   memory_peak=self.usage[1])  # fmt: skip

    async def _wait(self) -> ExitStatus:
        code, self.exited_at = await wait_process(self.proc)
        sigkilled = code in (-signal.SIGKILL, 128 + signal.SIGKILL) and not self._killed
        oom = await asyncio.to_thread(self.cgroup.oom_killed, sigkilled)
        self.usage = await asyncio.to_thread(self.cgroup.usage)  # before the cleanup removes it
        await self.runtime.cleanup(self.cid, self.bundle, self.cgroup, self.slot)
        if self.on_exit is not None:
            self.on_exit()
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
        if self.runtime.name == "runsc":
            # the cgroup holds gVisor's sentry, not the container's processes: ask runsc to deliver it
            task = asyncio.get_running_loop().create_task(self._runsc_term())
            _pending.add(task)
            task.add_done_callback(_pending.discard)
            return
        self.cgroup.signal_all(signal.SIGTERM)

    async def _runsc_term(self) -> None:
        # runsc's control socket lives in the network namespace the sandbox started in
        netns = str(self.slot.path) if self.slot is not None and not self.slot.blocked else None
        code, out = await self.runtime._run_tool("kill", self.cid, "TERM", netns=netns)
        if code != 0:
            log.warning(
                "runsc kill %s TERM failed (%d): %s", self.cid, code, out.decode(errors="replace").strip()
            )

    def kill(self) -> None:
        self._killed = True
        self.cgroup.kill_all()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class OciRuntime(SandboxOps):
    """One OCI runtime binary (crun, runc or runsc) behind the ``ContainerRuntime`` port."""

    capabilities = Capabilities(
        isolation=True,
        cpu_limit=True,
        memory_limit=True,
        pids_limit=True,
        network_isolation=True,
        gpu=True,
        volumes=True,
        sandboxes=True,
    )

    def __init__(
        self, name: str, binary: str, ctx: RuntimeContext, cgroups: CgroupHost | None = None
    ) -> None:
        self.name = name
        self.binary = binary
        self.ctx = ctx
        self.cgroups = cgroups or detect()
        self.state_root = Path("/run/vivace") / ctx.key / name  # the runtime's own state, per worker
        # containers' root mounts: where a user namespace's root can reach them (the worker's own directory
        # may be private to host root)
        self.roots = Path("/run/vivace") / ctx.key / "roots"
        self.global_args = ["--root", str(self.state_root)]
        if name == "runsc":
            # --oci-seccomp: Debian's runsc ignores the spec's seccomp profile without it (its exec'd
            # processes still run without one: gVisor's own kernel is their boundary)
            self.global_args += ["--platform=ptrace", "--host-uds=open", "--oci-seccomp"]
            # GPUs under gVisor need its nvproxy, which Debian's 2022 build does not have
            self.capabilities = dataclasses.replace(OciRuntime.capabilities, gpu=False)
        elif name == "crun":
            self.global_args += ["--cgroup-manager=cgroupfs"]
        # crun refuses hybrid hosts; it runs where the controller-less cgroup2 mount is detached
        self._detach_unified = (
            self.cgroups.unified_mount if (name == "crun" and self.cgroups.mode == "hybrid") else None
        )
        self.warm = WarmPool(self)
        self.sandbox_warm = WarmPool(self, sandbox=True)
        self._claims: dict[str, WarmContainer] = {}  # reserved for a container that is starting
        self._oci_names: dict[str, str] = {}  # container id -> OCI name, where they differ (warm)
        self._driver_files: tuple[list[Path], list[Path]] | None = None  # NVIDIA libraries and tools
        # user namespaces: crun and runc, as root, where idmapped mounts work (prepare() finds out)
        self.userns = False
        self.userns_problem: str | None = "not tried yet"

    def volume_owner(self, spec: ContainerSpec) -> tuple[int, int] | None:
        """Who a volume's files must belong to on the host for the container's user to own them."""
        user = spec.image.user if spec.image is not None else None
        uid, gid = (user[0], user[1]) if user else (0, 0)
        if self.userns:
            return idmap.HOST_BASE + uid, idmap.HOST_BASE + gid
        return (uid, gid) if user else None

    # -- preparation -----------------------------------------------------------------------------
    def prepare(self) -> None:
        base = images.base_rootfs(self.ctx.images)
        images.runtime_bundle(self.ctx.images)
        self._prepare_userns(base / "rootfs")
        if self.ctx.memory_cap:  # containers without a memory limit of their own stay within the worker's
            try:
                cap_memory(self.cgroups, f"vivace/{self.ctx.key}", self.ctx.memory_cap)
            except OSError as err:
                log.warning(
                    "could not cap this worker's containers' memory at %d MiB: %s", self.ctx.memory_cap, err
                )

    def _idmapped_base(self, base: Path) -> Path:
        return base.parent / f"{base.parent.name}.idmap-{self.name}"

    def _idmapped_layer(self, layer: Path) -> Path:
        """An image layer seen through the containers' user namespace mapping (mounted once, kept)."""
        target = layer.parent.parent / f"layers.idmap-{self.name}" / layer.name
        if target not in mounted_under(target.parent):
            target.mkdir(parents=True, exist_ok=True)
            ns = idmap.userns_fd()
            try:
                idmap.mount_idmapped(layer, target, ns)
            finally:
                os.close(ns)
        return target

    def _prepare_userns(self, base: Path) -> None:
        if self.name == "runsc" or os.geteuid() != 0:
            self.userns, self.userns_problem = (
                False,
                "runsc has its own" if self.name == "runsc" else "needs root",
            )
            return
        target = self._idmapped_base(base)
        try:
            if target not in mounted_under(target.parent):
                ns = idmap.userns_fd()
                try:
                    idmap.mount_idmapped(base, target, ns)
                finally:
                    os.close(ns)
        except OSError as err:
            self.userns, self.userns_problem = False, str(err)
            log.warning("%s containers run without a user namespace: %s", self.name, err)
            return
        self.userns, self.userns_problem = True, None

    def preexec(self) -> None:
        """What runs between fork and exec of this runtime's binary when others drive it (image builds):
        the runtime dies with its parent; on a hybrid host crun gets its private mount namespace."""
        self._preexec(None)

    def _cgroup(self, cid: str) -> ContainerCgroup:
        return ContainerCgroup(self.cgroups, f"vivace/{self.ctx.key}/{cid}")

    def _preexec(self, netns: str | None = None) -> None:
        # runs between fork and exec: the runtime must not outlive the worker
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if netns is not None:  # runsc builds its network from the namespace it starts in
            fd = os.open(netns, os.O_RDONLY)
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({netns}) failed")
            os.close(fd)
        if self._detach_unified is not None:
            if _libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
            _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
            _libc.umount2(str(self._detach_unified).encode(), MNT_DETACH)

    async def _run_tool(self, *args: str, timeout: float = 10, netns: str | None = None) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            self.binary, *self.global_args, *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=lambda: self._preexec(netns),
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 124, b"timed out"
        return proc.returncode or 0, out

    # -- lifecycle -------------------------------------------------------------------------------
    def reserve(self, spec: ContainerSpec) -> None:
        """Called before the worker listens on the container's socket: when a warm container can serve
        ``spec``, take it and point ``spec.socket_path`` at the socket directory it already mounts."""
        warm = (self.sandbox_warm if spec.command is not None else self.warm).take(spec)
        if warm is not None:
            self._claims[spec.container_id] = warm
            spec.socket_path = warm.dir / "sock" / "vivace.sock"

    async def start(self, spec: ContainerSpec) -> OciHandle:
        warm = self._claims.pop(spec.container_id, None)
        if warm is not None and spec.command is not None:
            return await self._claim_sandbox(warm, spec)
        if warm is not None:
            return await self._claim(warm, spec)
        handle, _ = await self._launch(spec, spec.container_id, spec.workdir)
        return handle

    async def _launch(
        self, spec: ContainerSpec, name: str, cdir: Path, *, warm: bool = False
    ) -> tuple[OciHandle, asyncio.subprocess.Process]:
        """Mount the root, make the cgroup, take a network slot and ``<runtime> run`` the container
        named ``name`` whose files live in ``cdir``."""
        if spec.image is not None:
            lowers = [self._idmapped_layer(layer) if self.userns else layer for layer in spec.image.layers]
        else:
            base = images.base_rootfs(self.ctx.images) / "rootfs"
            lowers = [self._idmapped_base(base) if self.userns else base]
        bundle_src = images.runtime_bundle(self.ctx.images)
        bundle = cdir / "bundle"
        rootfs, upper, work = self.roots / name, cdir / "upper", cdir / "work"
        if spec.ephemeral_disk:  # the writable layer on a filesystem of its own, of exactly that size
            disk = cdir / "disk"
            await asyncio.to_thread(make_disk, cdir / "disk.img", disk, spec.ephemeral_disk)
            upper, work = disk / "upper", disk / "work"
        for d in (bundle, rootfs, upper, work):
            d.mkdir(parents=True, exist_ok=True)
        if self.userns:  # the private layer belongs to the container's root
            for d in (upper, work):
                os.chown(d, idmap.HOST_BASE, idmap.HOST_BASE)
        cgroup = self._cgroup(name)
        slot: Slot | None = None
        try:
            cgroup.create(
                Limits(spec.cpu, spec.cpu_limit, spec.memory, spec.memory_limit, self.ctx.pids_limit)
            )
            # a sandbox's writable layer may become an image (snapshot_filesystem): no overlay state a
            # layer cannot express (a renamed lower directory is copied instead: EXDEV)
            mount_overlay(lowers, upper, work, rootfs, SANDBOX_OVERLAY if spec.command is not None else "")
            nofile = _nofile_limit()
            pool = self.ctx.network
            if pool is not None:
                slot = await pool.acquire(spec.block_network)
                if spec.cidr_allowlist is not None and not slot.blocked:
                    await asyncio.to_thread(pool.restrict, slot, spec.cidr_allowlist)
            netns = slot.path if slot is not None else None
            # runsc (Debian's 2022 build) cannot build its own network stack from a prepared namespace
            # ("cannot run with network enabled in root network namespace"). It is started inside the
            # slot's namespace with --network=host instead: the sandbox's sockets are the slot's, behind
            # the same NAT and iptables rules; a blocked slot (loopback only) gets --network=none.
            runsc_netns = None
            extra: list[str] = []
            if self.name == "runsc":
                if slot is not None and not slot.blocked:
                    runsc_netns, extra = slot.path, ["--network=host"]
                else:
                    extra = ["--network=none"]
            resolv = None
            if slot is not None and not slot.blocked:
                resolv = self.ctx.workdir / "resolv.conf"
                if not resolv.exists():
                    resolv.write_text(pool.resolv_conf() if pool else "")
            config = oci_config(
                spec,
                cgroups_path=cgroup.runtime_path,
                runtime_bundle=bundle_src,
                netns=netns,
                rlimit_nofile=nofile,
                resolv_conf=resolv,
                warm=warm,
                gpu=self._gpu_config(spec.gpus) if spec.gpus else None,
                userns=self.userns,
                root_path=str(rootfs),
                tmp_bind=_root_tmp(rootfs) if self.name == "runsc" else None,
            )
            if self.name == "runsc":
                config["linux"]["seccomp"] = seccomp_profile(clone_filters=False)
            (bundle / "config.json").write_text(json.dumps(config))
            self.state_root.mkdir(parents=True, exist_ok=True)
            master = slave = None
            if spec.tty:  # the main process on a terminal: the runtime's own stdio is the pty's slave end
                master, slave = os.openpty()
                config["process"].update(terminal=True, consoleSize={"height": 24, "width": 80})
                config["process"]["env"].append("TERM=xterm-256color")
                (bundle / "config.json").write_text(json.dumps(config))
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.binary, *self.global_args, *extra, "run", "--bundle", str(bundle), name,
                    stdin=slave if slave is not None else (
                        asyncio.subprocess.PIPE if warm or spec.command is not None else asyncio.subprocess.DEVNULL),
                    stdout=slave if slave is not None else asyncio.subprocess.PIPE,
                    stderr=slave if slave is not None else asyncio.subprocess.PIPE,
                    preexec_fn=functools.partial(self._preexec, runsc_netns),
                )  # fmt: skip
            except BaseException:
                if master is not None:
                    os.close(master)
                raise
            finally:
                if slave is not None:
                    os.close(slave)
        except BaseException:
            await self.cleanup(name, bundle, cgroup, slot)
            raise
        handle = OciHandle(proc, self, cgroup, bundle, name, slot)
        handle.process = config["process"]
        handle.tty_master = master
        return handle, proc

    def _gpu_config(self, given: list[gpus.Gpu]) -> dict[str, Any]:
        if self._driver_files is None:
            self._driver_files = gpus.driver_files()
        libs, tools = self._driver_files
        return gpus.oci_gpu_config(given, gpus.device_nodes(given), libs, tools)

    async def _claim(self, warm: WarmContainer, spec: ContainerSpec) -> OciHandle:
        """Hand a warm container its function: its limits, its source, its environment."""
        handle = warm.handle
        try:
            await asyncio.to_thread(
                handle.cgroup.create,
                Limits(spec.cpu, spec.cpu_limit, spec.memory, spec.memory_limit, self.ctx.pids_limit),
            )
            if spec.source_dir is not None:
                await asyncio.to_thread(_link_tree, spec.source_dir, warm.dir / "src")
            env = {k: v for k, v in spec.env.items() if not k.startswith("VIVACE_")}
            env.update(VIVACE_TASK_ID=spec.container_id, MODAL_TASK_ID=spec.container_id)
            assert warm.proc.stdin is not None
            warm.proc.stdin.write(json.dumps({"env": env}).encode() + b"\n")
            await warm.proc.stdin.drain()
            warm.proc.stdin.close()
        except BaseException:
            handle.kill()
            await handle.wait()
            raise
        log.info("container %s: started from warm %s container %s", spec.container_id, self.name, handle.cid)
        self._oci_names[spec.container_id] = handle.cid
        handle.on_exit = lambda: self._oci_names.pop(spec.container_id, None)
        return handle

    async def start_warm(self, image: ImageRootfs | None = None, *, sandbox: bool = False) -> WarmContainer:
        """One container for the pool: no user code, no function yet; on ``image``'s root when given.
        ``sandbox``: a sandbox's, whose main process will exec the sandbox's command."""
        name = ("warm-sb" if sandbox else "warm-") + uuid.uuid4().hex[:12]
        cdir = self.ctx.workdir / "containers" / name
        (cdir / "sock").mkdir(parents=True, mode=0o755)
        (cdir / "src").mkdir()
        spec = ContainerSpec(
            container_id=name,
            workdir=cdir,
            socket_path=cdir / "sock" / "vivace.sock",
            source_dir=None if sandbox else cdir / "src",
            image=image,
        )
        if sandbox:
            spec.command = sandbox_stub(spec)
        handle, proc = await self._launch(spec, name, cdir, warm=True)
        (cdir / "pid").write_text(str(proc.pid))
        return WarmContainer(name, cdir, handle, proc, image_key(image))

    async def cleanup(self, cid: str, bundle: Path, cgroup: ContainerCgroup, slot: Slot | None) -> None:
        await self._run_tool("delete", "--force", cid)
        await asyncio.to_thread(self._cleanup_sync, bundle, cgroup, self.roots / cid)
        if slot is not None and self.ctx.network is not None:
            await self.ctx.network.release(slot)

    @staticmethod
    def _cleanup_sync(bundle: Path, cgroup: ContainerCgroup, rootfs: Path) -> None:
        cgroup.remove()
        for m in mounted_under(bundle.parent):
            unmount(m)
        unmount(rootfs)
        with contextlib.suppress(OSError):
            rootfs.rmdir()
        if bundle.parent.name.startswith("warm-"):  # a warm container's files are the runtime's own
            shutil.rmtree(bundle.parent, ignore_errors=True)

    async def close(self) -> None:
        """Stop the warm pool and every warm container not handed out."""
        claimed = list(self._claims.values())
        self._claims.clear()
        await self.warm.close([w for w in claimed if not w.name.startswith("warm-sb")])
        await self.sandbox_warm.close([w for w in claimed if w.name.startswith("warm-sb")])

    async def exec(self, spec: ContainerSpec, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        name = self._oci_names.get(spec.container_id, spec.container_id)
        code, out = await self._run_tool("exec", name, *argv, timeout=timeout)
        return code, out, b""

    def reconcile(self, keep: set[str]) -> list[str]:
        """Containers of this worker that a previous run left: kill them and remove their cgroups."""
        removed = []
        for cid in leftovers(self.cgroups, f"vivace/{self.ctx.key}"):
            if cid in keep:
                continue
            self._cgroup(cid).remove()
            removed.append(f"cgroup {cid}")
        if self.state_root.is_dir():
            for d in self.state_root.iterdir():
                owner = d.name.split("_sandbox:")[0]  # runsc also leaves "<id>_sandbox:<id>.lock" files
                if owner in keep:
                    continue
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
                else:
                    d.unlink(missing_ok=True)
                removed.append(f"{self.name} state {d.name}")
        for m in mounted_under(self.ctx.images):
            if m.name.endswith(f".idmap-{self.name}") or m.parent.name == f"layers.idmap-{self.name}":
                unmount(m)
                with contextlib.suppress(OSError):
                    m.rmdir()
                removed.append(f"idmapped mount {m.name}")
        # the worker's own (now empty) directories go too; starts recreate them
        for d in self._cgroup("x").dirs():
            with contextlib.suppress(OSError):
                d.parent.rmdir()
        for m in mounted_under(self.roots):
            unmount(m)
            removed.append(f"root mount {m.name}")
        for m in mounted_under(self.ctx.workdir / "containers"):  # ephemeral disks (loop, autoclear)
            if m.name == "disk" and m.parent.name not in keep:
                unmount(m)
                removed.append(f"ephemeral disk of {m.parent.name}")
        if self.roots.is_dir():
            for d in self.roots.iterdir():
                with contextlib.suppress(OSError):
                    d.rmdir()
        for d in (self.state_root, self.roots, self.state_root.parent):
            with contextlib.suppress(OSError):
                d.rmdir()
        return removed


def _root_tmp(rootfs: Path) -> Path:
    """The root filesystem's own /tmp (made, sticky and world-writable, where the image has none)."""
    tmp = rootfs / "tmp"
    if not tmp.is_dir():
        tmp.mkdir(mode=0o1777)
        os.chmod(tmp, 0o1777)
    return tmp


def _link_tree(src: Path, dst: Path) -> None:
    """Make ``dst`` (an empty directory) a copy of ``src`` made of hardlinks (a copy across filesystems)."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, symlinks=True, dirs_exist_ok=True)


def _nofile_limit() -> int:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(65536, hard if hard != resource.RLIM_INFINITY else 65536)
