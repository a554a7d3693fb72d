"""The seccomp profile of ``security.py`` compiled to a BPF program, for runtimes that take one (bwrap).

OCI runtimes read the profile as JSON; bubblewrap wants the compiled filter (``--seccomp FD``). The
compiler is the host's libseccomp (Debian's ``libseccomp2``, which systemd depends on), loaded through
ctypes: no new dependency. Where it is missing :func:`bpf_program` raises :class:`SeccompUnavailable`
and the caller runs without a filter, saying so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

from vivace.worker.runtimes.security import seccomp_profile

__all__ = ["SeccompUnavailable", "bpf_program", "unavailable_reason"]

_ALLOW = 0x7FFF0000
_KILL_PROCESS = 0x80000000
_ERRNO = 0x00050000
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
        "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}  # fmt: skip
_ARCHES = {"SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X86": "x86", "SCMP_ARCH_X32": "x32",
           "SCMP_ARCH_AARCH64": "aarch64", "SCMP_ARCH_ARM": "arm"}  # fmt: skip
# the ABIs a kernel of each machine runs (a filter need not cover another machine's)
_COMPATIBLE = {"x86_64": ("x86_64", "x86", "x32"), "aarch64": ("aarch64", "arm")}


class SeccompUnavailable(RuntimeError):
    pass


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _library() -> Any:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as err:
        raise SeccompUnavailable(
            f"libseccomp is not installed ({err}); Debian: apt-get install libseccomp2"
        ) from err
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    ]  # fmt: skip
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _action(rule: dict[str, Any]) -> int:
    name = rule["action"]
    if name == "SCMP_ACT_ALLOW":
        return _ALLOW
    if name == "SCMP_ACT_ERRNO":
        return _ERRNO | (int(rule.get("errnoRet", 1)) & 0xFFFF)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"):
        return _KILL_PROCESS
    raise ValueError(f"unsupported seccomp action {name!r}")


def compile_profile(profile: dict[str, Any]) -> bytes:
    """An OCI seccomp profile as a classic BPF program (``struct sock_filter`` array)."""
    lib = _library()
    ctx = lib.seccomp_init(_action({"action": profile["defaultAction"]}))
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        native = lib.seccomp_arch_native()
        machine = os.uname().machine
        for arch in profile.get("architectures", []):
            name = _ARCHES.get(arch, "?")
            token = lib.seccomp_arch_resolve_name(name.encode())
            if token and token != native and name in _COMPATIBLE.get(machine, ()):
                lib.seccomp_arch_add(ctx, token)  # an arch this libseccomp cannot add is left out
        for rule in profile["syscalls"]:
            action = _action(rule)
            args = rule.get("args", [])
            cmps = (_ArgCmp * max(1, len(args)))(
                *(_ArgCmp(a["index"], _OPS[a["op"]], a["value"], a.get("valueTwo", 0)) for a in args)
            )
            for name in rule["names"]:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:  # unknown to this libseccomp: nothing to filter
                    continue
                rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), cmps if args else None)
                if rc < 0:
                    raise SeccompUnavailable(f"seccomp rule for {name} failed: {os.strerror(-rc)}")
        fd = os.memfd_create("vivace-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


@functools.cache
def bpf_program() -> bytes:
    """The shared profile (``security.seccomp_profile``), compiled once per process."""
    return compile_profile(seccomp_profile())


def unavailable_reason() -> str | None:
    """Why containers of bwrap would run without a seccomp filter here (None: they have one)."""
    try:
        bpf_program()
    except (SeccompUnavailable, OSError, ValueError) as err:
        return str(err)
    return None
