"""What this host supports for running containers, and what it lacks (``vivace doctor``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vivace.worker import gpus, idmap, network
from vivace.worker.cgroups import CgroupError, detect
from vivace.worker.runtimes import FUNCTION_DEFAULTS, PREFERENCE, bwrap, missing_runtimes, seccomp


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0].strip() if out else ""


def checks() -> list[Check]:
    found: list[Check] = []
    root = os.geteuid() == 0
    found.append(
        Check("root", root, "running as root" if root else f"running as uid {os.geteuid()}",
              "" if root else "crun, runc and runsc need the worker to run as root (bwrap runs without)")
    )  # fmt: skip
    try:
        host = detect()
        detail = f"{host.mode}" + (
            f", missing controllers: {', '.join(host.missing)}" if host.missing else ""
        )
        if host.mode == "hybrid":
            detail += " (crun runs in a private mount namespace without the cgroup2 mount)"
        found.append(
            Check("cgroups", not host.missing, detail, "enable the memory, cpu and pids controllers")
        )
    except CgroupError as err:
        found.append(Check("cgroups", False, str(err), "mount cgroup2 at /sys/fs/cgroup"))
    filesystems = Path("/proc/filesystems").read_text() if Path("/proc/filesystems").exists() else ""
    found.append(
        Check("overlayfs", "overlay" in filesystems, "supported" if "overlay" in filesystems else "not supported",
              "load the overlay kernel module (modprobe overlay)")
    )  # fmt: skip
    seccomp = "Seccomp:" in Path("/proc/self/status").read_text()
    found.append(Check("seccomp", seccomp, "supported" if seccomp else "not supported by this kernel"))
    userns = Path("/proc/sys/user/max_user_namespaces")
    n = int(userns.read_text()) if userns.exists() else 0
    found.append(
        Check("user namespaces", n > 0, f"max_user_namespaces={n}", "sysctl user.max_user_namespaces=15000")
    )
    missing_net = network.have_tools()
    found.append(
        Check("container networking", not missing_net,
              "ip and iptables present" if not missing_net else f"missing: {', '.join(missing_net)}",
              "apt-get install iproute2 iptables")
    )  # fmt: skip
    why = missing_runtimes()
    for name in PREFERENCE:
        if name == "process":
            found.append(Check("runtime process", True, "always available: no isolation, development only"))
            continue
        binary = (bwrap.binary() if name == "bwrap" else shutil.which(name)) or name
        if name in why:
            fix = "apt-get install bubblewrap" if name == "bwrap" else f"apt-get install {name}"
            found.append(Check(f"runtime {name}", False, why[name], fix))
        else:
            found.append(Check(f"runtime {name}", True, _version(binary) or "available"))
        if name == "bwrap" and name not in why:
            found.extend(_bwrap_checks(root))
    if root:
        problem = idmap.probe()
        found.append(
            Check("container user namespaces", problem is None,
                  "crun and runc containers run as an unprivileged uid range (idmapped root filesystem)"
                  if problem is None else f"unavailable: {problem}; containers' root is host root",
                  "Linux 5.12+ with idmapped mounts on the worker directory's filesystem")
        )  # fmt: skip
    found_gpus, how = gpus.discover()
    nodes = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    if found_gpus:
        found.append(Check("GPUs", True, f"{len(found_gpus)} via {how}: {gpus.describe(found_gpus)}"))
    elif nodes:
        found.append(Check("GPUs", False, f"{len(nodes)} NVIDIA device node(s) but {how}",
                           "install the NVIDIA driver's user-space libraries (libnvidia-ml.so.1)"))  # fmt: skip
    else:
        found.append(Check("GPUs", True, "none (CPU only)"))
    found.append(
        Check("KVM", Path("/dev/kvm").exists(), "/dev/kvm present" if Path("/dev/kvm").exists() else "absent")
    )
    return found


def _bwrap_checks(root: bool) -> list[Check]:
    """What bwrap containers get on this host beyond their own namespaces and no capabilities."""
    no_limits = bwrap.limits_status()
    no_seccomp = seccomp.unavailable_reason()
    return [
        Check("bwrap user namespaces", True, "unprivileged user namespaces work" if not root else "work"),
        Check("bwrap limits", no_limits is None,
              "cpu, memory and pids limits enforced (cgroups)" if no_limits is None
              else f"NOT enforced: {no_limits}",
              "run the worker as root, or in a delegated cgroup (systemd-run --user -p Delegate=yes ...)"),
        Check("bwrap seccomp", no_seccomp is None,
              "seccomp filter (libseccomp)" if no_seccomp is None
              else f"no seccomp filter ({no_seccomp}): no_new_privs, no capabilities and a user namespace only",
              "apt-get install libseccomp2"),
        Check("bwrap network", root,
              "own network namespace from the worker's pool (no network where it has none)" if root
              else "NOT isolated: containers share the host's network (block_network=True: loopback only)",
              "run the worker as root for per-container network namespaces"),
    ]  # fmt: skip


def default_runtime() -> str:
    why = missing_runtimes()
    for name in FUNCTION_DEFAULTS:
        if name not in why:
            return name
    return "process"
