"""User namespaces for containers: root inside is an unprivileged uid range outside.

A container's root (uid 0) is host uid ``HOST_BASE`` (and so on for ``SIZE`` ids). For it to still own
the image's files, the read-only base is mounted once per worker *idmapped* (``mount_setattr`` with
``MOUNT_ATTR_IDMAP``, Linux 5.12+): through that mount, files owned by host root appear owned by
``HOST_BASE``, so inside the container they belong to root as usual, and nothing is chowned or copied.
The overlay's private upper layer belongs to ``HOST_BASE`` as well. Where the kernel or filesystem
cannot do idmapped mounts, containers run without a user namespace and ``vivace doctor`` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from pathlib import Path

# far above the ranges /etc/subuid hands to users (100000 + 65536 n) and below the 32-bit limit
HOST_BASE = 0x70000000
SIZE = 65536

CLONE_NEWUSER = 0x10000000
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64 and aarch64 share these
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, 0o2000000
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 4
MOUNT_ATTR_IDMAP = 0x00100000

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mappings() -> list[dict[str, int]]:
    """The OCI ``uidMappings``/``gidMappings`` entry for containers."""
    return [{"containerID": 0, "hostID": HOST_BASE, "size": SIZE}]


def userns_fd() -> int:
    """A file descriptor of a user namespace with the containers' mapping (for idmapped mounts)."""
    holder = subprocess.Popen(
        ["sleep", "60"],
        preexec_fn=_unshare_user,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # the child has unshared before exec; wait until its namespace differs from ours
        ours = os.stat("/proc/self/ns/user").st_ino
        for _ in range(1000):
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{holder.pid}/ns/user").st_ino != ours:
                    break
            os.sched_yield()
        for kind in ("uid", "gid"):
            Path(f"/proc/{holder.pid}/{kind}_map").write_text(f"0 {HOST_BASE} {SIZE}\n")
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.kill()
        holder.wait()


def _unshare_user() -> None:
    if _libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) failed")


def mount_idmapped(source: Path, target: Path, ns_fd: int) -> None:
    """Bind ``source`` at ``target`` with the user namespace's mapping applied to file ownership."""
    fd = _libc.syscall(
        SYS_OPEN_TREE, AT_FDCWD, str(source).encode(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
    )
    if fd < 0:
        raise _err("open_tree", source)
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, ns_fd)
        if (
            _libc.syscall(
                SYS_MOUNT_SETATTR,
                fd,
                b"",
                AT_EMPTY_PATH | AT_RECURSIVE,
                ctypes.byref(attr),
                ctypes.sizeof(attr),
            )
            != 0
        ):
            raise _err("mount_setattr(MOUNT_ATTR_IDMAP)", source)
        target.mkdir(parents=True, exist_ok=True)
        if (
            _libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, str(target).encode(), MOVE_MOUNT_F_EMPTY_PATH)
            != 0
        ):
            raise _err("move_mount", target)
    finally:
        os.close(fd)


def _err(what: str, path: Path) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{what} on {path}: {os.strerror(errno)}")


def probe() -> str | None:
    """None where containers can have user namespaces here (idmapped mounts work), else why not."""
    import tempfile

    if os.geteuid() != 0:
        return "needs root"
    with tempfile.TemporaryDirectory(prefix="vivace-idmap-") as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        src.mkdir()
        try:
            ns = userns_fd()
            try:
                mount_idmapped(src, dst, ns)
            finally:
                os.close(ns)
        except OSError as err:
            return str(err)
        owner = dst.stat().st_uid
        _libc.umount2(str(dst).encode(), 2)
        return None if owner == HOST_BASE else f"idmapped mount shows uid {owner}, not {HOST_BASE}"
