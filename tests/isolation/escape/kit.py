"""Sandbox escape suite: attacks on real sandboxes under gVisor (runsc) and crun, each of which must be
denied, followed by a check that the host, a bystander sandbox and the worker's bookkeeping were not
touched.

Every attack runs as a Python snippet inside the sandbox (the base root filesystem has Python and
``/bin/sh``, no coreutils); raw system calls go through ``ctypes`` with x86_64 numbers. Each snippet
prints one JSON line with what it saw (errnos, outcomes) and the test asserts the exact set of denials
it accepts, per runtime. Two runtimes, two kernels:

* **crun**: the host kernel, behind namespaces, no capabilities, ``no_new_privs``, the seccomp profile
  of ``vivace.worker.runtimes.security`` (``EPERM`` for the calls it lists) and read-only or masked
  paths.
* **runsc**: gVisor's sentry is the kernel the sandbox sees. It answers ``ENOSYS`` for system calls it
  does not implement at all (that counts as denied: the call never reaches the host kernel), has no
  ``/proc/kcore``, ``/proc/sysrq-trigger`` and so on (``ENOENT``), and checks capabilities itself.

Positive controls aim only at things the tests own: a canary file, a decoy process, a listener, a
throwaway UTS namespace. Network attacks target loopback, the host's own addresses and the tests' own
namespaces, never an outside address. Bombs are capped by the sandbox's own cgroup limits (and by a
bound in the snippet, in case a limit ever fails).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import vivace
from vivace import exception as exc
from vivace.testing.cluster import LocalCluster

from ..conftest import WorkerFootprint, wait_for

RUNTIMES = ("runsc", "crun")
PIDS_LIMIT = 96
PEER_PORT = 8765
# a connection that must not get through: dropped (timeout), refused, or no route
UNREACHABLE = {"timeout", "ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH"}
RUNSC_NO_SECCOMP = (
    "Debian's runsc loads the seccomp profile of runtimes/security.py for a sandbox's main process "
    "(--oci-seccomp) but not for processes exec'd into it: gVisor lets a capability-less root do this "
    "inside its own kernel (not the host's)"
)

# What every snippet starts with: raw system calls (x86_64 numbers) and errno helpers.
PRELUDE = """
import ctypes, errno, json, os, socket, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = dict(ptrace=101, syslog=103, adjtimex=159, chroot=161, settimeofday=164, mount=165, umount2=166,
          swapon=167, iopl=172, ioperm=173, init_module=175, delete_module=176, sethostname=170,
          setdomainname=171, clock_settime=227, kexec_load=246, add_key=248, request_key=249, keyctl=250,
          acct=163, unshare=272, perf_event_open=298, name_to_handle_at=303, open_by_handle_at=304,
          setns=308, process_vm_readv=310, finit_module=313, bpf=321, userfaultfd=323, clone=56,
          fsopen=430, open_tree=428, pivot_root=155)

def arg(a):
    return ctypes.c_long(a) if isinstance(a, int) else a

def call(name, *args):
    '''The errno of a raw system call: 0 when it succeeded (and the result is then closed if an fd).'''
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *map(arg, args))
    if r == -1:
        return ctypes.get_errno()
    if name in ("userfaultfd", "perf_event_open", "bpf", "fsopen", "open_tree", "open_by_handle_at"):
        try:
            os.close(r)
        except OSError:
            pass
    return 0

def errno_of(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0

def write_back(path):
    '''Write a file's own content back (a no-op, should it ever be allowed): the errno.'''
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    try:
        with open(path, "wb", buffering=0) as f:
            f.write(data)
    except OSError as e:
        return e.errno
    return 0

def out(**kw):
    print(json.dumps(kw), flush=True)
"""

CONNECT = """
def connect(host, port, timeout=1.5):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "connected:" + s.recv(16).decode(errors="replace")
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
"""


# -- the cluster, the long-lived sandboxes and their helpers -------------------------------------------
@dataclass
class Env:
    runtime: str
    cluster: LocalCluster
    app: vivace.App
    fp: WorkerFootprint
    bystander: vivace.Sandbox
    hostname: str
    live: list[vivace.Sandbox] = field(default_factory=list)  # module-long sandboxes
    finished: list[vivace.Sandbox] = field(default_factory=list)  # one test's sandboxes, terminated


@contextlib.contextmanager
def scratch(env, **kw):
    """A sandbox for one destructive test, terminated after it."""
    kw.setdefault("timeout", 600)
    sb = vivace.Sandbox.create(*kw.pop("command", ()), app=env.app, **kw)
    try:
        yield sb
    finally:
        with contextlib.suppress(exc.Error):
            sb.terminate()
        env.finished.append(sb)


def run(sb, code, *, stdin=None, timeout=120, prelude=PRELUDE):
    """Run a snippet in ``sb``: (exit code, stdout, stderr)."""
    p = sb.exec("python3", "-c", prelude + textwrap.dedent(code), timeout=timeout)
    if stdin is not None:
        p.stdin.write(stdin)
        p.stdin.write_eof()
        p.stdin.drain()
    stdout, stderr = p.stdout.read(), p.stderr.read()
    return p.wait(), stdout, stderr


def probe(sb, code, **kw):
    """Run a snippet that ends with ``out(...)``: its JSON."""
    rc, stdout, stderr = run(sb, code, **kw)
    if rc != 0 or not stdout.strip():  # a broken snippet is no finding: not an AssertionError an xfail takes
        pytest.fail(f"the snippet failed (exit code {rc}): {stdout[-2000:]}{stderr[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def container_id(sb) -> str:
    return vivace.Sandbox.from_id(sb.object_id)._info["container_id"]


def address_of(env, sb) -> tuple[str, str]:
    """A sandbox's (address, gateway), read on the host from its network namespace (once it runs)."""
    cid = container_id(sb)
    prefix = f"vv{env.fp.key[:6]}-"

    def lookup():
        by_inode = {
            p.stat().st_ino: p.name for p in Path("/run/netns").iterdir() if p.name.startswith(prefix)
        }
        for pid in env.fp.container_cgroups().get(cid, ()):
            with contextlib.suppress(OSError):
                ns = by_inode.get(os.stat(f"/proc/{pid}/ns/net").st_ino)
                if ns is not None:
                    return ns
        return None

    ns = wait_for(lookup, f"the network namespace of sandbox {sb.object_id} ({cid})", 60)
    out = subprocess.run(
        ["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    iface = ipaddress.IPv4Interface(out.split()[3])
    return str(iface.ip), str(iface.ip - 1)  # the host's end of the /30 is one below


def host_addresses() -> list[str]:
    """The host's own IPv4 addresses other than loopback and the sandboxes' veths (all local)."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        addr = ipaddress.IPv4Interface(parts[3]).ip
        if not addr.is_loopback and not parts[1].startswith("vh"):
            found.append(str(addr))
    return found


def memory_cap(env, sb) -> int | None:
    """The tightest hard memory limit over a sandbox's cgroup and its ancestors, in bytes (None: none)."""
    cg = env.fp.cgroups
    rel = Path("vivace") / env.fp.key / container_id(sb)
    base, name, unlimited = (
        (cg.mounts[""], "memory.max", "max")
        if cg.unified
        else (cg.mounts["memory"], "memory.limit_in_bytes", None)
    )
    caps = []
    for d in [base / rel, *(base / p for p in rel.parents if str(p) != ".")]:
        with contextlib.suppress(OSError):
            value = (d / name).read_text().strip()
            if value != unlimited and int(value) < 1 << 62:
                caps.append(int(value))
    return min(caps, default=None)


def per_runtime(env, crun, runsc):
    return crun if env.runtime == "crun" else runsc
