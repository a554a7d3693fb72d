"""Commands run inside a running bwrap container (``exec``), through util-linux's ``nsenter``.

nsenter joins the container's namespaces (user first, then cgroup, ipc, uts, pid, mount and, where the
container has its own, network) and forks, so that the command is inside the pid namespace. The user
namespace is the one that owns the others (``NS_GET_USERNS``): bubblewrap's ``--disable-userns`` leaves its
processes in a nested one, from which the others cannot be joined without root. Joining gives
it every capability of the container's user namespace: before it execs the command the container's own
Python takes them away again — the bounding set included — and sets ``no_new_privs`` and the seccomp
filter, so that the command runs as the container's main process does. The command and its environment
reach it through a memfd, never through the host's process list or nsenter's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
from pathlib import Path

from vivace.worker.cgroups import ContainerCgroup

__all__ = ["exec_in"]

PYTHON = "/usr/local/bin/python3"
NS_GET_USERNS = 0xB701
_libc = ctypes.CDLL(None, use_errno=True)

# runs inside the container, as the container's Python, before the command
TRAMPOLINE = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = int(sys.argv[1])
req = json.loads(os.pread(fd, os.lseek(fd, 0, 2), 0))
os.close(fd)
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit("exec: cannot set no_new_privs")
for cap in range(64):
    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (EINVAL past the kernel's last capability)
libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
if libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()) != 0:
    sys.exit("exec: cannot drop capabilities")
bpf = bytes.fromhex(req["bpf"])
if bpf:
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    if libc.prctl(22, 2, ctypes.byref(Prog(len(bpf) // 8, ctypes.addressof(buf))), 0, 0) != 0:
        sys.exit("exec: cannot load the seccomp filter")
os.chdir("/root")
argv = req["argv"]
try:
    os.execvpe(argv[0], argv, req["env"])
except OSError as err:
    sys.stderr.write(f"{argv[0]}: {err.strerror}\n")
    os._exit(127)
"""


def _main_pid(bwrap_pid: int) -> int:
    """The container's first process that is not bubblewrap's own (its namespaces are the container's)."""
    todo = [bwrap_pid]
    while todo:
        p = todo.pop(0)
        with contextlib.suppress(OSError):
            for c in map(int, Path(f"/proc/{p}/task/{p}/children").read_text().split()):
                if Path(f"/proc/{c}/comm").read_text().strip() != "bwrap":
                    return c
                todo.append(c)
    raise ProcessLookupError(f"no container process under bwrap {bwrap_pid}")


def _own_namespace(pid: int, kind: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return False


def _owning_userns(pid: int) -> int:
    """A descriptor of the user namespace that owns ``pid``'s mount namespace."""
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, NS_GET_USERNS)
    finally:
        os.close(fd)


def _preexec(cgroup: ContainerCgroup | None) -> None:
    if cgroup is not None:
        cgroup.add_current_process()


async def exec_in(
    bwrap_pid: int,
    cgroup: ContainerCgroup | None,
    env: dict[str, str],
    argv: list[str],
    bpf: bytes | None,
    timeout: float,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in the container under bwrap ``bwrap_pid``: (exit code, stdout, stderr)."""
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        return 126, b"", b"exec needs nsenter (Debian: apt-get install util-linux)\n"
    try:
        target = _main_pid(bwrap_pid)
        userns = _owning_userns(target)
    except OSError as gone:
        return 125, b"", f"container process not found: {gone}\n".encode()
    spaces = [
        f"--user=/proc/self/fd/{userns}",
        "--preserve-credentials",
        "--mount",
        "--pid",
        "--ipc",
        "--uts",
    ]
    spaces += [f"--{ns}" for ns in ("cgroup", "net") if _own_namespace(target, ns)]
    fd = os.memfd_create("vivace-exec")
    try:
        os.write(fd, json.dumps({"argv": argv, "env": env, "bpf": (bpf or b"").hex()}).encode())
        proc = await asyncio.create_subprocess_exec(
            nsenter, "--target", str(target), *spaces, "--root", "--",
            PYTHON, "-I", "-S", "-c", TRAMPOLINE, str(fd),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, pass_fds=[fd, userns], start_new_session=True,
            preexec_fn=lambda: _preexec(cgroup),
        )  # fmt: skip
    finally:
        os.close(fd)
        os.close(userns)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return 124, b"", f"timed out after {timeout:g} s\n".encode()
    return proc.returncode or 0, out, err
