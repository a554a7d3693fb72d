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
import functools
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from vivace.worker import images
from vivace.worker.cgroups import CgroupHost, ContainerCgroup, Limits, detect, leftovers
from vivace.worker.network import Slot
from vivace.worker.runtimes.base import Capabilities, ContainerSpec, ExitStatus, RuntimeContext
from vivace.worker.runtimes.security import MASKED_PATHS, READONLY_PATHS, seccomp_profile

log = logging.getLogger("vivace.worker")

SOCKET_DIR = "/run/vivace"
SOCKET_IN_CONTAINER = SOCKET_DIR + "/vivace.sock"
PATH = "/usr/local/bin:/usr/bin:/bin"
PR_SET_PDEATHSIG = 1
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def mount_overlay(lower: list[Path], upper: Path, work: Path, target: Path) -> None:
    opts = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, opts.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount the container's root filesystem: {os.strerror(err)}")


def unmount(target: Path) -> None:
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT
            raise OSError(err, f"cannot unmount {target}: {os.strerror(err)}")


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
) -> dict[str, Any]:
    """The OCI runtime spec for one container (pure: unit-tested)."""
    env = {
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
        {"destination": SOCKET_DIR, "type": "bind", "source": str(spec.socket_path.parent),
         "options": ["bind", "ro", "nosuid", "nodev", "noexec"]},
        {"destination": images.RUNTIME_MOUNT, "type": "bind", "source": str(runtime_bundle),
         "options": ["rbind", "ro", "nosuid", "nodev"]},
    ]  # fmt: skip
    if spec.source_dir is not None:
        mounts.append(
            {"destination": "/src", "type": "bind", "source": str(spec.source_dir),
             "options": ["rbind", "ro", "nosuid", "nodev"]}
        )  # fmt: skip
    if resolv_conf is not None:
        mounts.append(
            {"destination": "/etc/resolv.conf", "type": "bind", "source": str(resolv_conf),
             "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}
        )  # fmt: skip
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/usr/local/bin/python3", "-m", "vivace.runtime"],
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/root",
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": rlimit_nofile, "soft": rlimit_nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroups_path,
            "namespaces": namespaces,
            "seccomp": seccomp_profile(),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


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

    async def wait(self) -> ExitStatus:
        code = await self.proc.wait()
        sigkilled = code in (-signal.SIGKILL, 128 + signal.SIGKILL) and not self._killed
        oom = await asyncio.to_thread(self.cgroup.oom_killed, sigkilled)
        await self.runtime.cleanup(self.cid, self.bundle, self.cgroup, self.slot)
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
        self.cgroup.signal_all(signal.SIGTERM)

    def kill(self) -> None:
        self._killed = True
        self.cgroup.kill_all()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class OciRuntime:
    """One OCI runtime binary (crun, runc or runsc) behind the ``ContainerRuntime`` port."""

    capabilities = Capabilities(
        isolation=True, cpu_limit=True, memory_limit=True, pids_limit=True, network_isolation=True
    )

    def __init__(
        self, name: str, binary: str, ctx: RuntimeContext, cgroups: CgroupHost | None = None
    ) -> None:
        self.name = name
        self.binary = binary
        self.ctx = ctx
        self.cgroups = cgroups or detect()
        self.state_root = Path("/run/vivace") / ctx.key / name  # the runtime's own state, per worker
        self.global_args = ["--root", str(self.state_root)]
        if name == "runsc":
            self.global_args += ["--platform=ptrace", "--host-uds=open"]
        elif name == "crun":
            self.global_args += ["--cgroup-manager=cgroupfs"]
        # crun refuses hybrid hosts; it runs where the controller-less cgroup2 mount is detached
        self._detach_unified = (
            self.cgroups.unified_mount if (name == "crun" and self.cgroups.mode == "hybrid") else None
        )

    # -- preparation -----------------------------------------------------------------------------
    def prepare(self) -> None:
        images.base_rootfs(self.ctx.images)
        images.runtime_bundle(self.ctx.images)

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

    async def _run_tool(self, *args: str, timeout: float = 10) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            self.binary, *self.global_args, *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=self._preexec,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 124, b"timed out"
        return proc.returncode or 0, out

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, spec: ContainerSpec) -> OciHandle:
        base = images.base_rootfs(self.ctx.images) / "rootfs"
        bundle_src = images.runtime_bundle(self.ctx.images)
        bundle = spec.workdir / "bundle"
        rootfs, upper, work = bundle / "rootfs", spec.workdir / "upper", spec.workdir / "work"
        for d in (rootfs, upper, work):
            d.mkdir(parents=True, exist_ok=True)
        cgroup = self._cgroup(spec.container_id)
        slot: Slot | None = None
        try:
            cgroup.create(
                Limits(spec.cpu, spec.cpu_limit, spec.memory, spec.memory_limit, self.ctx.pids_limit)
            )
            mount_overlay([base], upper, work, rootfs)
            nofile = _nofile_limit()
            pool = self.ctx.network
            if pool is not None:
                slot = await pool.acquire(spec.block_network)
            netns = slot.path if slot is not None else None
            # runsc (Debian's 2022 build) neither joins a namespace path from the spec ("cannot run with
            # network enabled in root network namespace") nor starts when launched inside one: until that
            # is solved its containers get no network (--network=none), which block_network asks anyway
            runsc_netns = None
            if self.name == "runsc":
                netns = None
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
            )
            (bundle / "config.json").write_text(json.dumps(config))
            self.state_root.mkdir(parents=True, exist_ok=True)
            extra = []
            if self.name == "runsc":  # runsc's own network stack, in the given namespace, or none at all
                extra = ["--network=none"]
            proc = await asyncio.create_subprocess_exec(
                self.binary, *self.global_args, *extra, "run", "--bundle", str(bundle), spec.container_id,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                preexec_fn=functools.partial(self._preexec, runsc_netns),
            )  # fmt: skip
        except BaseException:
            await self.cleanup(spec.container_id, bundle, cgroup, slot)
            raise
        return OciHandle(proc, self, cgroup, bundle, spec.container_id, slot)

    async def cleanup(self, cid: str, bundle: Path, cgroup: ContainerCgroup, slot: Slot | None) -> None:
        await self._run_tool("delete", "--force", cid)
        await asyncio.to_thread(self._cleanup_sync, bundle, cgroup)
        if slot is not None and self.ctx.network is not None:
            await self.ctx.network.release(slot)

    @staticmethod
    def _cleanup_sync(bundle: Path, cgroup: ContainerCgroup) -> None:
        cgroup.remove()
        for m in mounted_under(bundle.parent):
            unmount(m)
        unmount(bundle / "rootfs")

    async def exec(self, spec: ContainerSpec, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        code, out = await self._run_tool("exec", spec.container_id, *argv, timeout=timeout)
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
                if d.is_dir() and d.name not in keep:
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(f"{self.name} state {d.name}")
        # the worker's own (now empty) directories go too; starts recreate them
        for d in self._cgroup("x").dirs():
            with contextlib.suppress(OSError):
                d.parent.rmdir()
        for d in (self.state_root, self.state_root.parent):
            with contextlib.suppress(OSError):
                d.rmdir()
        return removed


def _nofile_limit() -> int:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(65536, hard if hard != resource.RLIM_INFINITY else 65536)
