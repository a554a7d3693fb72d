"""What an isolated container may do: capabilities, seccomp, masked paths. Shared by every runtime.

Containers run user functions, not system software, so they get **no capabilities at all** (root
inside a container still owns its own files) and ``no_new_privs``. The seccomp profile allows by
default and refuses, with ``EPERM``, the system calls a function has no business making: kernel
modules and kexec, mounts and namespace changes, BPF and perf, keyrings, clock and swap changes,
ptrace of other processes, and creating user namespaces through ``clone``/``unshare``.
"""

from __future__ import annotations

from typing import Any

DENIED_SYSCALLS = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "init_module",
    "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
    "mount", "mount_setattr", "move_mount", "name_to_handle_at", "nfsservctl", "open_by_handle_at",
    "open_tree", "perf_event_open", "pivot_root", "process_vm_readv", "process_vm_writev", "ptrace",
    "query_module", "quotactl", "reboot", "request_key", "setns", "settimeofday", "stime", "swapoff",
    "swapon", "syslog", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vhangup",
    "adjtimex",
)  # fmt: skip

# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
CLONE_NAMESPACE_FLAGS = (0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)

MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def seccomp_profile(*, clone_filters: bool = True) -> dict[str, Any]:
    """``clone_filters=False``: without the rules on ``clone``'s flags and ``clone3`` (gVisor's 2022
    build evaluates the masked comparison so that every ``clone`` fails, threads included; under gVisor
    namespaces are its own kernel's anyway)."""
    if not clone_filters:
        full = seccomp_profile()
        return {**full, "syscalls": full["syscalls"][:1]}
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            # clone with any namespace flag; clone3 passes its flags in memory, so it answers ENOSYS and
            # libc falls back to clone, which is filtered here
            *(
                {
                    "names": ["clone"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": 1,
                    "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
                }
                for flag in CLONE_NAMESPACE_FLAGS
            ),
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        ],
    }
