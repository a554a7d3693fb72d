"""Per-container cgroups on v1, v2 and hybrid hosts.

The worker owns one cgroup per container, ``<root>/<worker key>/<container id>``, and writes the limits
there (memory, cpu, pids). Every runtime starts the container *inside* it: OCI runtimes get a child
``ctr`` as their ``cgroupsPath`` (limits stay on the parent, so they hold whatever the runtime does),
bwrap and process runtimes are moved in before they exec. After the container ends the worker reads
whether the kernel OOM-killed something in it, then removes the cgroup.

Hybrid hosts (v1 controllers plus a cgroup2 mount that holds no controllers) are treated as v1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS_V1 = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000


class CgroupError(RuntimeError):
    pass


@dataclass(frozen=True)
class CgroupHost:
    mode: str  # "v1", "v2" or "hybrid"
    mounts: dict[str, Path]  # v1: controller -> mount point; v2: {"": mount point}
    missing: tuple[str, ...] = ()
    unified_mount: Path | None = None  # hybrid: the controller-less cgroup2 mount
    others: tuple[Path, ...] = ()  # v1 hierarchies we set no limits in (runtimes create cgroups there)
    cpuacct: Path | None = None  # v1: the cpuacct hierarchy where it is not the cpu one (CPU accounting)

    def roots(self) -> list[Path]:
        """Every hierarchy a container's cgroup may appear in."""
        found = list(dict.fromkeys([*self.mounts.values(), *self.others]))
        if self.unified_mount is not None:
            found.append(self.unified_mount)
        return found

    @property
    def unified(self) -> bool:
        return self.mode == "v2"


def detect(mountinfo: str | None = None) -> CgroupHost:
    """Which cgroup layout this host has, from ``/proc/self/mountinfo``."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    v1: dict[str, Path] = {}
    cpuacct: Path | None = None
    v2: list[Path] = []
    other: list[Path] = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mountpoint, fstype, options = Path(fields[4]), rfields[0], rfields[2].split(",")
        if fstype == "cgroup2":
            v2.append(mountpoint)
        elif fstype == "cgroup":
            for opt in options:
                if opt in CONTROLLERS_V1:
                    v1.setdefault(opt, mountpoint)
                elif opt == "cpuacct" and cpuacct is None:
                    cpuacct = mountpoint
            other.append(mountpoint)
    if v1:
        missing = tuple(c for c in CONTROLLERS_V1 if c not in v1)
        rest = tuple(dict.fromkeys(p for p in other if p not in v1.values()))
        acct = cpuacct if cpuacct is not None and cpuacct != v1.get("cpu") else None
        return CgroupHost("hybrid" if v2 else "v1", v1, missing, v2[0] if v2 else None, rest, acct)
    if v2:
        root = min(v2, key=lambda p: len(str(p)))
        have = (
            set((root / "cgroup.controllers").read_text().split())
            if (root / "cgroup.controllers").exists()
            else set()
        )
        missing = tuple(c for c in CONTROLLERS_V1 if c not in have)
        return CgroupHost("v2", {"": root}, missing)
    raise CgroupError("no cgroup filesystem is mounted: containers cannot be limited on this host")


@dataclass(frozen=True)
class Limits:
    cpu: float  # request, in cores
    cpu_limit: float | None
    memory: int  # request, MiB
    memory_limit: int | None  # MiB; None: no hard limit
    pids: int | None


class ContainerCgroup:
    """One container's cgroup (a directory per v1 controller, or one v2 directory)."""

    def __init__(self, host: CgroupHost, relpath: str) -> None:
        self.host = host
        self.relpath = relpath.strip("/")  # e.g. vivace/<worker key>/<container id>

    # OCI runtimes create this child and put the container in it
    @property
    def runtime_path(self) -> str:
        return "/" + self.relpath + "/ctr"

    def dirs(self) -> list[Path]:
        return [root / self.relpath for root in self.host.roots()]

    def create(self, limits: Limits) -> None:
        if self.host.unified:
            self._create_v2(limits)
        else:
            self._create_v1(limits)

    def _create_v1(self, limits: Limits) -> None:
        m = self.host.mounts
        mem = m["memory"] / self.relpath
        mem.mkdir(parents=True, exist_ok=True)
        _write(mem / "memory.soft_limit_in_bytes", str(limits.memory << 20))
        if limits.memory_limit is not None:
            _write(mem / "memory.limit_in_bytes", str(limits.memory_limit << 20))
            with contextlib.suppress(OSError):  # only with swap accounting
                _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_limit << 20))
            with contextlib.suppress(OSError):
                _write(mem / "memory.swappiness", "0")
        cpu = m["cpu"] / self.relpath
        cpu.mkdir(parents=True, exist_ok=True)
        _write(cpu / "cpu.shares", str(max(2, int(limits.cpu * 1024))))
        if limits.cpu_limit is not None:
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu_limit * CPU_PERIOD_US))))
        if self.host.cpuacct is not None:  # CPU accounting for metering, where it has its own hierarchy
            (self.host.cpuacct / self.relpath).mkdir(parents=True, exist_ok=True)
        pids = m["pids"] / self.relpath
        pids.mkdir(parents=True, exist_ok=True)
        if limits.pids is not None:
            _write(pids / "pids.max", str(limits.pids))

    def _create_v2(self, limits: Limits) -> None:
        root = self.host.mounts[""]
        path = root / self.relpath
        # enable the controllers down the tree (a cgroup's children get what its subtree_control names)
        parts = Path(self.relpath).parts
        for i in range(len(parts)):
            d = root.joinpath(*parts[: i + 1])
            d.mkdir(exist_ok=True)
            parent = d.parent
            with contextlib.suppress(OSError):
                _write(parent / "cgroup.subtree_control", "+memory +cpu +pids")
        with contextlib.suppress(OSError):
            _write(path / "cgroup.subtree_control", "+memory +cpu +pids")
        _write(path / "memory.low", str(limits.memory << 20))
        if limits.memory_limit is not None:
            _write(path / "memory.max", str(limits.memory_limit << 20))
            with contextlib.suppress(OSError):
                _write(path / "memory.swap.max", "0")
        _write(path / "cpu.weight", str(max(1, min(10000, int(limits.cpu * 100)))))
        if limits.cpu_limit is not None:
            _write(path / "cpu.max", f"{max(1000, int(limits.cpu_limit * CPU_PERIOD_US))} {CPU_PERIOD_US}")
        if limits.pids is not None:
            _write(path / "pids.max", str(limits.pids))

    def add_current_process(self) -> None:
        """Move the calling process in (used between fork and exec, so async-signal-safe enough)."""
        pid = str(os.getpid())
        if self.host.unified:
            leaf = self.host.mounts[""] / self.relpath / "ctr"
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", pid)
            return
        # v1: the hierarchies ``create`` made (the others hold no directory of ours)
        roots = [*self.host.mounts.values(), *([self.host.cpuacct] if self.host.cpuacct else [])]
        for root in dict.fromkeys(roots):
            _write(root / self.relpath / "cgroup.procs", pid)

    def oom_killed(self, sigkilled: bool) -> bool:
        """Whether the kernel OOM-killed a process in this container.

        v2 counts OOM kills up the tree (``memory.events``). v1 counts them only in the cgroup of the
        killed task, which the OCI runtime has already removed; there a SIGKILL we did not send, in a
        container whose peak usage reached its memory limit, is the kernel's OOM killer."""
        if self.host.unified:
            f = self.host.mounts[""] / self.relpath / "memory.events"
            return _counter(f, "oom_kill") > 0
        mem = self.host.mounts["memory"] / self.relpath
        if _counter(mem / "memory.oom_control", "oom_kill") > 0:
            return True
        if not sigkilled:
            return False
        for prefix in ("memory.", "memory.memsw."):  # memsw: with swap accounting
            with contextlib.suppress(OSError, ValueError):
                peak = int((mem / f"{prefix}max_usage_in_bytes").read_text())
                limit = int((mem / f"{prefix}limit_in_bytes").read_text())
                if peak >= limit - (1 << 20):  # failcnt stays 0 on some kernels: the peak tells
                    return True
        return False

    def memory_usage(self) -> int | None:
        """Bytes of memory the container uses now (None where the host does not say)."""
        if self.host.unified:
            f = self.host.mounts[""] / self.relpath / "memory.current"
        else:
            f = self.host.mounts["memory"] / self.relpath / "memory.usage_in_bytes"
        try:
            return int(f.read_text())
        except (OSError, ValueError):
            return None

    def usage(self) -> tuple[float | None, int | None]:
        """What the kernel counted for the container so far: CPU seconds (user and system, all its
        processes, children included) and peak memory bytes; None where the host does not say."""
        cpu: float | None = None
        peak: int | None = None
        if self.host.unified:
            d = self.host.mounts[""] / self.relpath
            usec = _stat(d / "cpu.stat", "usage_usec")
            cpu = None if usec is None else usec / 1e6
            peak = _read_int(d / "memory.peak")
        else:
            for root in self.host.roots():  # cpuacct: its own hierarchy or the cpu one's
                for sub in ("", "ctr"):
                    ns = _read_int(root / self.relpath / sub / "cpuacct.usage")
                    if ns is not None:
                        cpu = ns / 1e9
                        break
                if cpu is not None:
                    break
            if "memory" in self.host.mounts:
                peak = _read_int(self.host.mounts["memory"] / self.relpath / "memory.max_usage_in_bytes")
        return cpu, peak

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs():
            if not d.exists():
                continue
            for dirpath, _dirs, _files in os.walk(d):
                with contextlib.suppress(OSError):
                    found.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
        return found

    def kill_all(self) -> None:
        """SIGKILL everything in the container (a fork loop included)."""
        if self.host.unified:
            kill = self.host.mounts[""] / self.relpath / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    _write(kill, "1")
                return
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def signal_all(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def remove(self) -> None:
        """Kill what is left and remove the directories, children first."""
        self.kill_all()
        for d in self.dirs():
            _rmtree_cgroup(d)


def _counter(path: Path, key: str) -> int:
    found = _stat(path, key)
    return 0 if found is None else found


def _stat(path: Path, key: str) -> int | None:
    """The value of ``key`` in a flat-keyed cgroup file (``memory.events``, ``cpu.stat``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _rmtree_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for dirpath, dirs, _files in os.walk(path, topdown=False):
        for name in dirs:
            _rmdir(Path(dirpath, name))
    _rmdir(path)


def _rmdir(path: Path) -> None:
    for _ in range(100):  # a cgroup is busy for a moment after its last process exits
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise
            time.sleep(0.01)


def cap_memory(host: CgroupHost, relpath: str, mib: int) -> None:
    """A hard memory limit on ``relpath`` (a worker's own cgroup, above all its containers): whatever a
    container without a limit of its own does, the worker's containers together stay within what the
    worker offers."""
    if host.unified:
        root = host.mounts[""]
        parts = Path(relpath).parts
        for i in range(len(parts)):
            d = root.joinpath(*parts[: i + 1])
            d.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                _write(d.parent / "cgroup.subtree_control", "+memory +cpu +pids")
        _write(root / relpath / "memory.max", str(mib << 20))
        return
    mem = host.mounts["memory"] / relpath
    mem.mkdir(parents=True, exist_ok=True)
    _write(mem / "memory.limit_in_bytes", str(mib << 20))


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def leftovers(host: CgroupHost, relroot: str) -> list[str]:
    """Container cgroups under ``relroot`` (one worker's) that exist on the host."""
    names: set[str] = set()
    for base in host.roots():
        d = base / relroot
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_dir())
    return sorted(names)


WORKER_LEAF = "vivace-worker"


def delegated_subtree(host: CgroupHost, own: str | None = None) -> str | None:
    """The cgroup v2 subtree a worker that is not root may manage (systemd's ``Delegate=yes``).

    That is the worker's own cgroup (``own``, read from ``/proc/self/cgroup`` when not given) where its
    directory and control files are writable and it offers the memory, cpu and pids controllers; a
    worker restarted inside the leaf :func:`claim_subtree` made gets that leaf's parent. None: no such
    subtree (or not a v2 host), and limits cannot be enforced."""
    if not host.unified:
        return None
    if own is None:
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    own = line[3:]
    if own is None:
        return None
    rel = own.strip("/")
    if Path(rel).name == WORKER_LEAF:
        rel = str(Path(rel).parent).strip(".")
    d = host.mounts[""] / rel
    if not rel or not all(os.access(d / f, os.W_OK) for f in (".", "cgroup.procs", "cgroup.subtree_control")):
        return None
    try:
        have = set((d / "cgroup.controllers").read_text().split())
    except OSError:
        return None
    return rel if set(CONTROLLERS_V1) <= have else None


def claim_subtree(host: CgroupHost, rel: str) -> None:
    """Make the delegated cgroup ``rel`` able to limit children: cgroup v2 lets only a cgroup without
    processes of its own hand controllers down, so whatever runs in it (the worker) moves to a leaf."""
    d = host.mounts[""] / rel
    leaf = d / WORKER_LEAF
    leaf.mkdir(exist_ok=True)
    for pid in (d / "cgroup.procs").read_text().split():
        try:
            _write(leaf / "cgroup.procs", pid)
        except ProcessLookupError:  # exited meanwhile
            continue
    _write(d / "cgroup.subtree_control", "+memory +cpu +pids")
