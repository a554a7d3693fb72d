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
import errno as E
import hashlib
import ipaddress
import json
import os
import platform
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import vivace
from vivace import exception as exc
from vivace.testing.cluster import LocalCluster

from .conftest import WorkerFootprint, require_runtime, sdk_pointed_at, wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]

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


@pytest.fixture(scope="module", params=RUNTIMES)
def env(request, tmp_path_factory):
    """A cluster whose worker offers only this runtime, and a bystander sandbox started before any attack
    (with a marker file of its own), checked after them all."""
    rt = request.param
    require_runtime(rt)
    if platform.machine() != "x86_64":  # the snippets use x86_64 system call numbers
        if os.environ.get("CI") == "true":
            pytest.fail("the sandbox escape suite runs on x86_64 machines")
        pytest.skip("the sandbox escape suite uses x86_64 system call numbers")
    home = tmp_path_factory.mktemp(f"escape-{rt}")
    fp = WorkerFootprint(home / "worker")
    with (
        LocalCluster(home, runtimes=[rt], warm_pool=0, pids_limit=PIDS_LIMIT) as cluster,
        sdk_pointed_at(cluster),
    ):
        app = vivace.App.lookup("escape-tests", create_if_missing=True)
        bystander = vivace.Sandbox.create(app=app, timeout=1800)
        bystander.filesystem.write_text("still here", "/root/marker.txt")
        e = Env(rt, cluster, app, fp, bystander, socket.gethostname(), live=[bystander])
        try:
            yield e
        finally:
            for sb in e.live:
                with contextlib.suppress(exc.Error):
                    sb.terminate()
    # a stopped worker leaves nothing: no cgroup, mount, namespace, link, chain or runtime state
    assert fp.container_cgroups() == {}
    assert fp.mounts() == []
    assert fp.namespaces() == [] and fp.links() == [] and fp.chains() == []
    assert fp.state() == []


@pytest.fixture(scope="module")
def box(env):
    """The sandbox most attacks run in: open network, default limits."""
    sb = vivace.Sandbox.create(app=env.app, timeout=1800)
    env.live.append(sb)
    return sb


@pytest.fixture(scope="module")
def peer(env):
    """Another sandbox serving on PEER_PORT on all its addresses: (sandbox, its address)."""
    sb = vivace.Sandbox.create(app=env.app, timeout=1800)
    env.live.append(sb)
    code = (
        "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {PEER_PORT})); s.listen(16); print('ready', flush=True)\n"
        "while True:\n    c, _ = s.accept(); c.sendall(b'peer'); c.close()"
    )
    server = sb.exec("python3", "-c", code)
    assert next(iter(server.stdout)) == "ready\n"
    return sb, address_of(env, sb)[0]


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    """A file on the host with content no sandbox may ever see: (path, content)."""
    path = tmp_path_factory.mktemp("canary") / "host-canary.txt"
    content = f"host-canary-{uuid.uuid4().hex}"
    path.write_text(content)
    return path, content


@pytest.fixture(scope="module")
def host_decoy():
    """A host process the tests own, which no attack may touch."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    yield proc
    proc.kill()
    proc.wait()


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


# -- the host's files ------------------------------------------------------------------------------------
def test_host_files_are_not_visible(env, box, canary):
    path, _ = canary
    home = env.cluster.home
    paths = [
        str(path),  # a file of the test's on the host
        str(path.parent),
        str(home / "credentials.json"),  # the control plane's and worker's state
        str(home / "worker"),
        str(home / "vivace.db"),
        str(Path.home() / ".vivace"),
        "/work",
        "/run/vivace",
        "/run/netns",
        "/var/run/docker.sock",
    ]
    seen = probe(box, f"out(**{{p: errno_of(os.stat, p) for p in {paths!r}}})")
    assert seen == dict.fromkeys(paths, E.ENOENT), seen


def test_host_etc_shadow_is_not_the_sandboxes(env, box):
    host = Path("/etc/shadow")
    seen = probe(
        box,
        """
        import hashlib
        try:
            out(sha=hashlib.sha256(open('/etc/shadow', 'rb').read()).hexdigest())
        except OSError as e:
            out(errno=e.errno)
        """,
    )
    if "errno" in seen:
        assert seen["errno"] == E.ENOENT, seen  # the base's minimal /etc has no shadow file
    else:
        assert not host.exists() or seen["sha"] != hashlib.sha256(host.read_bytes()).hexdigest()


def test_no_host_secret_anywhere_in_the_sandbox(env, box, canary):
    """The canary's content and the cluster's tokens are in no file, environment or command line."""
    needles = [canary[1], env.cluster.creds["token_secret"], env.cluster.creds["worker_token_secret"]]
    seen = probe(
        box,
        """
        needles = [n.encode() for n in json.loads(sys.stdin.read())]  # not in our own environment
        found, files = [], 0
        for top, dirs, names in os.walk('/'):
            if top == '/':
                dirs[:] = [d for d in dirs if d not in ('proc', 'sys', 'dev')]
            for n in names:
                p = os.path.join(top, n)
                try:
                    if not stat.S_ISREG(os.lstat(p).st_mode) or os.lstat(p).st_size > 64 << 20:
                        continue
                    data = open(p, 'rb').read()
                except OSError:
                    continue
                files += 1
                found += [p for needle in needles if needle in data]
        for pid in os.listdir('/proc'):
            if pid.isdigit() and int(pid) != os.getpid():
                for what in ('environ', 'cmdline'):
                    try:
                        data = open(f'/proc/{pid}/{what}', 'rb').read()
                    except OSError:
                        continue
                    found += [f'/proc/{pid}/{what}' for needle in needles if needle in data]
        out(found=found, files=files)
        """,
        stdin=json.dumps(needles),
    )
    assert seen["found"] == [] and seen["files"] > 100, seen  # it did look at the whole root


def test_proc_1_root_is_the_sandboxes_own_root(env, box, canary):
    seen = probe(
        box,
        f"""
        root = os.stat('/')
        def same(p):
            try:
                s = os.stat(p)
            except OSError as e:
                return e.errno
            return (s.st_dev, s.st_ino) == (root.st_dev, root.st_ino)
        roots = {{pid: same(f'/proc/{{pid}}/root') for pid in os.listdir('/proc') if pid.isdigit()}}
        out(roots=roots, up=same('/proc/1/root/../../..'), dotdot=same('/..'),
            canary=errno_of(os.stat, '/proc/1/root' + {str(canary[0])!r}),
            pid1=open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0].decode())
        """,
    )
    # runsc: gVisor refuses to follow another process's root link at all (EACCES)
    ok = per_runtime(env, {True}, {True, E.EACCES})
    assert True in seen["roots"].values() and set(seen["roots"].values()) <= ok, seen
    assert len(seen["roots"]) < 10, seen  # its own PID namespace: no host process shows
    assert seen["up"] in ok and seen["dotdot"] is True, seen
    assert seen["canary"] in per_runtime(env, {E.ENOENT}, {E.ENOENT, E.EACCES}), seen
    assert "python" in seen["pid1"], seen  # pid 1 is the sandbox's own idle process


def test_filesystem_api_stays_inside_the_sandbox(env, box, canary):
    path, _ = canary
    fs = box.filesystem
    with pytest.raises(exc.SandboxFilesystemNotFoundError):
        fs.read_text(str(path))
    with pytest.raises(exc.SandboxFilesystemNotFoundError):
        fs.read_text("/../../.." + str(path))
    # links made inside: one to the host path, one climbing far past the root (relative: gVisor's 2022
    # build resolves every path below a link to "/" as "/" itself)
    rc, _, err = run(box, f"os.symlink({str(path)!r}, '/tmp/host-link'); os.symlink('../' * 12, '/tmp/up')")
    assert rc == 0, err
    with pytest.raises(exc.SandboxFilesystemNotFoundError):
        fs.read_text("/tmp/host-link")  # the link resolves inside the sandbox
    with pytest.raises(exc.SandboxFilesystemNotFoundError):
        fs.read_text("/tmp/up" + str(path))
    target = path.parent / "written-from-the-sandbox.txt"
    fs.write_text("escaped?", "/tmp/up" + str(target))
    assert fs.read_text(str(target)) == "escaped?"  # it went to the sandbox's own files ...
    assert not target.exists()  # ... not the host's
    assert path.read_text().startswith("host-canary-")


def test_exec_workdir_is_a_path_in_the_sandbox(env, box):
    host_dir = env.cluster.home / "worker"  # exists on the host, not in the sandbox
    assert (host_dir / "images").is_dir()
    p = box.exec("python3", "-c", "import os; print(os.listdir('.'))", workdir=str(host_dir), timeout=60)
    stdout, rc = p.stdout.read(), p.wait()
    assert rc != 0 and "images" not in stdout, (rc, stdout)  # no such directory in the sandbox


# -- /proc and /sys --------------------------------------------------------------------------------------
def test_proc_sys_is_read_only(env, box):
    host_core = Path("/proc/sys/kernel/core_pattern").read_text()
    files = [
        "/proc/sys/kernel/core_pattern",  # the classic escape: a host program run on a crash
        "/proc/sys/kernel/hostname",
        "/proc/sys/kernel/modprobe",  # a host program run to load a module (if the kernel has modules)
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/vm/overcommit_memory",
    ]
    files = [f for f in files if Path(f).exists()]  # what this host's kernel has
    seen = probe(box, f"out(**{{p: write_back(p) for p in {files!r}}})")
    # runsc: gVisor's /proc/sys has only a few files, and they are not writable either
    allowed = per_runtime(env, {E.EROFS, E.EACCES, E.EPERM}, {E.EROFS, E.EACCES, E.EPERM, E.ENOENT})
    assert all(v in allowed for v in seen.values()), seen
    if env.runtime == "crun":
        assert set(seen.values()) == {E.EROFS}, seen  # mounted read-only
    assert Path("/proc/sys/kernel/core_pattern").read_text() == host_core


def test_sys_is_read_only(env, box):
    seen = probe(
        box,
        """
        mounts = [l.split() for l in open('/proc/self/mountinfo')]
        sys_opts = [m[5] for m in mounts if m[4] == '/sys']
        out(uevent=write_back('/sys/kernel/uevent_helper'),  # another classic: a helper run by the host
            mtu=write_back('/sys/class/net/lo/mtu'),
            mkdir=errno_of(os.mkdir, '/sys/kernel/vivace-escape'),
            sys_opts=sys_opts)
        """,
    )
    denied = per_runtime(env, {E.EROFS, E.EACCES, E.EPERM}, {E.EROFS, E.EACCES, E.EPERM, E.ENOENT})
    assert seen["uevent"] in denied and seen["mtu"] in denied and seen["mkdir"] in denied, seen
    if env.runtime == "crun":
        assert seen["sys_opts"] and all("ro" in o.split(",") for o in seen["sys_opts"]), seen


def test_proc_write_to_sysrq_trigger_is_refused(env, box):
    seen = probe(
        box,
        """
        def sysrq():
            with open('/proc/sysrq-trigger', 'w') as f:
                f.write('h')  # harmless even if it got through: the help text in the kernel log
        ro = {m.split()[4]: m.split()[5] for m in open('/proc/self/mountinfo')}
        out(trigger=errno_of(sysrq), sysrq=write_back('/proc/sys/kernel/sysrq'),
            ro={p: ro.get(p) for p in ('/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger')})
        """,
    )
    # crun: a read-only bind where the host kernel has sysrq; runsc: gVisor has no sysrq at all
    denied = per_runtime(env, {E.EROFS, E.EACCES, E.EPERM}, {E.ENOENT, E.EACCES, E.EPERM, E.EROFS})
    for name, path in (("trigger", "/proc/sysrq-trigger"), ("sysrq", "/proc/sys/kernel/sysrq")):
        if env.runtime == "crun" and not Path(path).exists():  # this host's kernel has no sysrq
            assert seen[name] == E.ENOENT, seen
        else:
            assert seen[name] in denied, seen
    if env.runtime == "crun":  # every read-only path the host has is a read-only mount inside
        for path, opts in seen["ro"].items():
            assert (opts is None) == (not Path(path).exists()), seen
            assert opts is None or "ro" in opts.split(","), seen


def test_kernel_memory_and_logs_are_masked(env, box):
    seen = probe(
        box,
        """
        def head(p):
            try:
                with open(p, 'rb') as f:
                    return len(f.read(4096))
            except OSError as e:
                return -e.errno
        addrs = set()
        try:
            for i, line in enumerate(open('/proc/kallsyms')):
                addrs.add(line.split()[0])
                if i > 2000:
                    break
        except OSError:
            pass
        buf = ctypes.create_string_buffer(4096)
        out(kcore=head('/proc/kcore'), keys=head('/proc/keys'), timer_list=head('/proc/timer_list'),
            sched_debug=head('/proc/sched_debug'), kmsg=head('/dev/kmsg'), mem=head('/dev/mem'),
            firmware=os.listdir('/sys/firmware') if os.path.isdir('/sys/firmware') else None,
            kallsyms=sorted(addrs)[:3], syslog=call('syslog', 3, buf, 4096),
            log=buf.value.decode(errors='replace')[:2000])
        """,
    )
    for name in ("kcore", "keys", "timer_list", "sched_debug"):
        assert seen[name] in (0, -E.ENOENT, -E.EACCES, -E.EPERM), seen  # empty (masked) or absent
    assert seen["kmsg"] == -E.ENOENT and seen["mem"] == -E.ENOENT, seen
    assert not seen["firmware"], seen
    assert set(seen["kallsyms"]) <= {"0000000000000000"}, seen  # no kernel address leaks
    if env.runtime == "runsc" and seen["syslog"] == 0:  # gVisor's own log: made-up boot messages
        assert "gVisor" in seen["log"] and platform.release() not in seen["log"], seen
    else:
        assert seen["syslog"] == E.EPERM, seen


# -- mounts, cgroups, namespaces ------------------------------------------------------------------------
def test_mount_is_refused(env, box):
    seen = probe(
        box,
        """
        os.makedirs('/tmp/m', exist_ok=True)
        MS_BIND, MS_REMOUNT, MS_REC = 4096, 32, 16384
        out(tmpfs=call('mount', b'tmpfs', b'/tmp/m', b'tmpfs', 0, None),
            proc=call('mount', b'proc', b'/tmp/m', b'proc', 0, None),
            bind_root=call('mount', b'/', b'/tmp/m', None, MS_BIND | MS_REC, None),
            remount_root=call('mount', None, b'/', None, MS_REMOUNT, None),
            unmask_kcore=call('umount2', b'/proc/kcore', 2),  # lifting a mask would show the real file
            unmount_proc=call('umount2', b'/proc', 2),
            fsopen=call('fsopen', b'tmpfs', 0),
            open_tree=call('open_tree', -100, b'/', 1))
        """,
    )
    # runsc: gVisor has no fsopen/open_tree (ENOSYS) and refuses the rest without CAP_SYS_ADMIN
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.ENOSYS})
    assert all(v in allowed for v in seen.values()), seen
    assert seen["tmpfs"] == seen["bind_root"] == seen["unmask_kcore"] == E.EPERM, seen


def test_cgroup_release_agent_is_out_of_reach(env, box):
    seen = probe(
        box,
        """
        os.makedirs('/tmp/cg', exist_ok=True)
        files = ['/sys/fs/cgroup/release_agent']  # where a v1 root would have it
        for top, dirs, names in os.walk('/sys/fs/cgroup'):
            files += [os.path.join(top, n) for n in names if n in ('release_agent', 'notify_on_release',
                      'cgroup.procs', 'memory.limit_in_bytes', 'pids.max', 'memory.max')]
        out(v1=call('mount', b'cgroup', b'/tmp/cg', b'cgroup', 0, b'memory'),
            rdma=call('mount', b'cgroup', b'/tmp/cg', b'cgroup', 0, b'rdma'),
            v2=call('mount', b'cgroup2', b'/tmp/cg', b'cgroup2', 0, None),
            files={f: write_back(f) for f in files},
            cgroupfs=[l.split()[4] for l in open('/proc/self/mountinfo') if ' cgroup' in l.split(' - ')[1][:8]])
        """,
    )
    assert seen["v1"] == seen["rdma"] == seen["v2"] == E.EPERM, seen  # no cgroupfs of its own ...
    assert seen["cgroupfs"] == [], seen  # ... nor a mounted one: no release_agent, no limits to raise
    assert all(v in (E.EROFS, E.EACCES, E.EPERM, E.ENOENT) for v in seen["files"].values()), seen


IN_CHILD = """
def in_child(fn):
    # run fn in a forked child: a namespace it enters must not carry over to the next attempt
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, str(fn()).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.waitpid(pid, 0)
    os.close(r)
    return int(data)
"""


def test_unshare_is_refused(env, box):
    seen = probe(
        box,
        """
        flags = dict(net=0x40000000, pid=0x20000000, uts=0x4000000, ipc=0x8000000)
        out(**{k: in_child(lambda: call('unshare', v)) for k, v in flags.items()})
        """,
        prelude=PRELUDE + IN_CHILD,
    )
    assert seen == dict.fromkeys(seen, E.EPERM), seen


def test_unshare_of_mount_and_cgroup_namespaces_is_refused(env, box, request):
    if env.runtime == "runsc":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="gVisor lets a capability-less root unshare its mount and cgroup namespaces; "
                + RUNSC_NO_SECCOMP,
            )
        )
    seen = probe(
        box,
        "out(mnt=in_child(lambda: call('unshare', 0x20000)), cgroup=in_child(lambda: call('unshare', 0x2000000)))",
        prelude=PRELUDE + IN_CHILD,
    )
    assert seen == {"mnt": E.EPERM, "cgroup": E.EPERM}, seen


def test_user_namespaces_are_refused(env, box, request):
    if env.runtime == "runsc":
        request.applymarker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=RUNSC_NO_SECCOMP))
    seen = probe(
        box,
        """
        def clone_newuser():
            SIGCHLD = 17  # a child that exits at once, should it ever be made
            r = libc.syscall(ctypes.c_long(NR['clone']), ctypes.c_long(0x10000000 | SIGCHLD), None,
                             None, None, None)
            if r == 0:
                os._exit(0)
            if r > 0:
                os.waitpid(r, 0)
            return ctypes.get_errno() if r == -1 else 0
        out(user=in_child(lambda: call('unshare', 0x10000000)),
            user_mnt=in_child(lambda: call('unshare', 0x10020000)), clone=in_child(clone_newuser))
        """,
        prelude=PRELUDE + IN_CHILD,
    )
    assert seen == dict.fromkeys(seen, E.EPERM), seen


def test_setns_is_refused(env, box):
    seen = probe(
        box,
        """
        res = {}
        for ns in ('net', 'mnt', 'pid', 'uts', 'user', 'ipc', 'cgroup'):
            try:
                fd = os.open(f'/proc/1/ns/{ns}', os.O_RDONLY)
            except OSError as e:
                res[ns] = ('open', e.errno)
                continue
            res[ns] = call('setns', fd, 0)
            os.close(fd)
        out(**res)
        """,
    )
    # runsc: gVisor has no /proc/<pid>/ns file for most types (ENOENT) and refuses setns into the
    # others (EOPNOTSUPP); none of them is the host's
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.EOPNOTSUPP})
    assert all(v == ["open", E.ENOENT] if isinstance(v, list) else v in allowed for v in seen.values()), seen
    if env.runtime == "crun":
        assert seen == dict.fromkeys(seen, E.EPERM), seen


def test_namespaces_are_not_the_hosts(env, box):
    kinds = ("pid", "net", "mnt", "uts", "ipc", "cgroup")
    host = {k: os.readlink(f"/proc/self/ns/{k}") for k in kinds}
    seen = probe(
        box,
        f"""
        links = {{k: f'/proc/self/ns/{{k}}' for k in {kinds!r}}}
        out(**{{k: os.readlink(p) for k, p in links.items() if os.path.lexists(p)}})
        """,
    )
    # runsc: gVisor shows only some of the links (its own namespaces, not the host's)
    assert {"net", "pid"} <= set(seen) and (env.runtime == "runsc" or set(seen) == set(kinds)), seen
    assert all(seen[k] != host[k] for k in seen), (seen, host)


# -- processes --------------------------------------------------------------------------------------------
def test_ptrace_of_init_is_refused(env, box):
    seen = probe(
        box,
        """
        import subprocess
        sibling = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
        iov = (ctypes.c_long * 2)(0, 0)
        res = dict(attach=call('ptrace', 16, 1, None, None), seize=call('ptrace', 0x4206, 1, None, None),
                   vm_readv=call('process_vm_readv', 1, iov, 1, iov, 1, 0),
                   vm_readv_sibling=call('process_vm_readv', sibling.pid, iov, 1, iov, 1, 0))
        sibling.kill(); sibling.wait()
        out(**res)
        """,
    )
    # runsc: gVisor has no process_vm_readv (ENOSYS)
    assert seen["attach"] == seen["seize"] == E.EPERM, seen
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.ENOSYS})
    assert seen["vm_readv"] in allowed and seen["vm_readv_sibling"] in allowed, seen


def test_ptrace_of_a_sibling_is_refused(env, box, request):
    if env.runtime == "runsc":
        request.applymarker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=RUNSC_NO_SECCOMP))
    seen = probe(
        box,
        """
        import subprocess
        sibling = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
        res = dict(attach=call('ptrace', 16, sibling.pid, None, None),
                   seize=call('ptrace', 0x4206, sibling.pid, None, None))
        sibling.kill(); sibling.wait()
        out(**res)
        """,
    )
    assert seen == {"attach": E.EPERM, "seize": E.EPERM}, seen


def test_kill_all_inside_spares_the_host(env, host_decoy):
    with scratch(env) as sb:
        decoy = sb.exec("python3", "-c", "import time; print('up', flush=True); time.sleep(600)")
        assert next(iter(decoy.stdout)) == "up\n"
        seen = probe(
            sb,
            f"""
            import signal
            visible = {host_decoy.pid} in [int(p) for p in os.listdir('/proc') if p.isdigit()]
            direct = errno_of(os.kill, {host_decoy.pid}, 0) if not visible else 'visible'
            out(direct=direct, all=errno_of(os.kill, -1, signal.SIGKILL))
            """,
        )
        assert seen == {"direct": E.ESRCH, "all": 0}, seen  # the host's pid is not there; kill(-1) ran
        assert decoy.wait() == 137  # positive control: it killed what was in the sandbox
    assert host_decoy.poll() is None  # and nothing outside
    assert env.bystander.poll() is None


def test_fork_bomb_is_capped_by_the_pids_limit(env, host_decoy):
    bomb = f"""
    import time
    kids, err = [], None
    for _ in range({PIDS_LIMIT * 8}):  # far past the limit: the cgroup stops it, not this bound
        try:
            pid = os.fork()
        except OSError as e:
            err = e.errno
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
    for k in kids:
        os.kill(k, 9)
    for k in kids:
        os.waitpid(k, 0)
    out(started=len(kids), errno=err)
    """
    with scratch(env) as sb:
        rc, stdout, stderr = run(sb, bomb)
        if env.runtime == "crun" or rc == 0:  # fork fails inside; the sandbox lives on
            seen = json.loads(stdout.strip().splitlines()[-1])
            assert seen["errno"] == E.EAGAIN and seen["started"] < PIDS_LIMIT, seen
            assert run(sb, "out(ok=1)")[0] == 0
        else:  # runsc: the sentry's own threads count against the limit too, and the sandbox dies of it
            assert rc != 0, (rc, stdout, stderr)
            sb.wait(raise_on_termination=False)
            assert sb.returncode is not None
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0  # host forks on
    assert host_decoy.poll() is None
    assert run(env.bystander, "out(ok=1)")[0] == 0


def test_memory_bomb_is_oom_killed(env):
    bomb = "chunks = []\nfor _ in range(512):\n    chunks.append(b'x' * (1 << 20))  # 512 MiB at most"
    with scratch(env, command=("python3", "-c", bomb), memory=(64, 64)) as sb:
        sb.wait(raise_on_termination=False)
        info = vivace.Sandbox.from_id(sb.object_id)._info
        assert info["result"] == "oom" and sb.returncode == 137, info
    assert run(env.bystander, "out(ok=1)")[0] == 0


def test_memory_is_capped_without_an_explicit_limit(env, box):
    """``memory=`` alone is a request (Modal's meaning); something must still cap a sandbox below the
    host's memory: the worker's own cgroup, at its ``--memory``. Read on the host, not by bombing it."""
    cap = memory_cap(env, box)
    assert cap is not None and cap <= env.cluster.worker_memory << 20, cap


def test_disk_bomb_on_the_root_filesystem_hits_its_ephemeral_disk(env):
    with scratch(env, ephemeral_disk=64, memory=(256, 256)) as sb:
        seen = probe(sb, FILL.format(path="/root/fill"), timeout=300)
    assert seen["errno"] == E.ENOSPC and seen["mib"] < 64, seen


def test_disk_bomb_in_tmp_hits_its_ephemeral_disk(env):
    # runsc mounts a tmpfs of its own at /tmp when the spec has none: the worker binds the root's /tmp
    with scratch(env, ephemeral_disk=64, memory=(512, 512)) as sb:
        seen = probe(sb, FILL.format(path="/tmp/fill"), timeout=300)
    assert seen["errno"] == E.ENOSPC and seen["mib"] < 64, seen


FILL = """
fd, written, err = os.open('{path}', os.O_WRONLY | os.O_CREAT), 0, None
chunk = b'x' * (1 << 20)
while written < (256 << 20):  # four times the disk: ENOSPC stops it, not this bound
    try:
        written += os.write(fd, chunk)
        os.fsync(fd)
    except OSError as e:
        err = e.errno
        break
os.close(fd)
os.unlink('{path}')
out(errno=err, mib=written >> 20)
"""


def test_huge_output_arrives_whole(env, box):
    size = 50 << 20
    code = (
        "import sys\nchunk = bytes(range(256)) * 4096\n"
        f"for _ in range({size} // len(chunk)):\n    sys.stdout.buffer.write(chunk)\nsys.stdout.flush()"
    )
    p = box.exec("python3", "-c", code, text=False, timeout=300)
    data = p.stdout.read()
    assert p.wait() == 0
    expected = hashlib.sha256(bytes(range(256)) * 4096 * (size // (256 * 4096))).hexdigest()
    assert len(data) == size and hashlib.sha256(data).hexdigest() == expected


# -- privileges -------------------------------------------------------------------------------------------
def test_no_capabilities_at_all(env, box):
    seen = probe(
        box,
        """
        status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
        caps = {k: int(status[k].strip(), 16) for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')
                if k in status}
        open('/tmp/owned', 'w').close()
        out(caps=caps, uid=os.getuid(), chown=errno_of(os.chown, '/tmp/owned', 1000, 1000),
            setuid=errno_of(os.setuid, 1000), setgroups=errno_of(os.setgroups, [1000]),
            nnp=libc.prctl(39, 0, 0, 0, 0))
        """,
    )
    assert seen["uid"] == 0, seen  # root inside ...
    assert set(seen["caps"]) >= {"CapPrm", "CapEff", "CapBnd"} and not any(seen["caps"].values()), seen
    assert seen["chown"] == seen["setuid"] == seen["setgroups"] == E.EPERM, seen  # ... with no power
    assert seen["nnp"] == 1, seen  # PR_GET_NO_NEW_PRIVS


def test_setuid_binary_gains_nothing(env, box):
    seen = probe(
        box,
        """
        import shutil, subprocess
        shutil.copy(os.path.realpath(sys.executable), '/tmp/suid-python')
        os.chmod('/tmp/suid-python', 0o4755)  # setuid root, owned by root
        r = subprocess.run(['/tmp/suid-python', '-c', "print(open('/proc/self/status').read())"],
                           capture_output=True, text=True)
        status = dict(l.split(':', 1) for l in r.stdout.splitlines() if ':' in l)
        v3 = (0x03000000).to_bytes(4, 'little') + b'\\xff' * 4 + bytes(4) + b'\\xff' * 4 + bytes(8)
        out(rc=r.returncode, cap_eff=status.get('CapEff', '').strip(),
            cap_prm=status.get('CapPrm', '').strip(), mode=oct(os.stat('/tmp/suid-python').st_mode),
            file_caps=errno_of(os.setxattr, '/tmp/suid-python', 'security.capability', v3))
        """,
    )
    assert seen["rc"] == 0 and seen["mode"].endswith("4755"), seen
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_prm"], 16) == 0, seen
    # file capabilities need CAP_SETFCAP; gVisor's gofer has no security.* attributes at all
    assert seen["file_caps"] in per_runtime(env, {E.EPERM}, {E.EPERM, E.EOPNOTSUPP}), seen


def test_kernel_modules_kexec_swap_and_accounting_are_refused(env, box):
    seen = probe(
        box,
        """
        image = ctypes.create_string_buffer(b'not a module', 64)
        fd = os.open('/usr/local/bin/python3', os.O_RDONLY)
        res = dict(init=call('init_module', image, 64, b''),
                   finit=call('finit_module', fd, b'', 0),
                   delete=call('delete_module', b'vivace_escape_test', os.O_NONBLOCK),
                   kexec=call('kexec_load', 0, 0, None, 0xdead0000),  # bad flags: harmless if allowed
                   swapon=call('swapon', b'/nonexistent-swap', 0),  # ENOENT, were it allowed
                   acct=call('acct', b'/nonexistent-acct'))
        os.close(fd)
        out(**res)
        """,
    )
    # runsc: gVisor refuses them itself, or implements them not at all (ENOSYS): nothing reaches the host
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.ENOSYS})
    assert all(v in allowed for v in seen.values()), seen


def test_device_nodes_are_refused(env, box):
    seen = probe(
        box,
        """
        def node(path, mode, dev):
            try:
                os.mknod(path, 0o600 | mode, dev)
            except OSError as e:
                return e.errno
            try:
                os.close(os.open(path, os.O_RDONLY))
            except OSError as e:
                return 'made, open: ' + errno.errorcode[e.errno]
            return 'opened'
        res = dict(
            nodes={p: node(p, kind, os.makedev(*dev)) for p, kind, dev in (
                ('/root/mem', stat.S_IFCHR, (1, 1)), ('/root/sda', stat.S_IFBLK, (8, 0)),
                ('/tmp/mem', stat.S_IFCHR, (1, 1)), ('/tmp/sda', stat.S_IFBLK, (8, 0)))},
            fifo=errno_of(os.mkfifo, '/root/fifo'),  # control: mknod itself works, privilege does not
            dev=sorted(os.listdir('/dev')),
            blocks=[os.path.join(t, n) for t, _, ns in os.walk('/dev') for n in ns
                    if stat.S_ISBLK(os.lstat(os.path.join(t, n)).st_mode)],
            opens={p: errno_of(os.open, p, os.O_RDONLY) for p in
                   ('/dev/mem', '/dev/kmem', '/dev/port', '/dev/sda', '/dev/vda', '/dev/nvme0n1',
                    '/dev/kvm', '/dev/loop0', '/dev/loop-control', '/dev/dm-0', '/dev/kmsg')})
        out(**res)
        """,
    )
    nodes = seen["nodes"]
    assert nodes["/root/mem"] == nodes["/root/sda"] == E.EPERM and seen["fifo"] == 0, seen
    # runsc: /tmp is gVisor's own tmpfs, where a node can be made but opens no device (ENXIO)
    in_tmp = per_runtime(env, {E.EPERM}, {E.EPERM, "made, open: ENXIO"})
    assert nodes["/tmp/mem"] in in_tmp and nodes["/tmp/sda"] in in_tmp, seen
    assert seen["blocks"] == [], seen
    assert seen["opens"] == dict.fromkeys(seen["opens"], E.ENOENT), seen
    standard = {
        "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "pts", "shm",
        "mqueue", "fd", "stdin", "stdout", "stderr", "core",
    }  # fmt: skip
    # runsc: gVisor adds its own emulated FUSE and TUN devices (served by the sentry, not the host)
    assert set(seen["dev"]) <= standard | per_runtime(env, set(), {"fuse", "net"}), seen


def test_chroot_escape_is_refused(env, box):
    seen = probe(
        box,
        """
        os.makedirs('/tmp/jail', exist_ok=True)
        root = os.stat('/')
        fd = os.open('/', os.O_RDONLY)
        up = os.stat('../../../..', dir_fd=fd)
        os.makedirs('/tmp/jail/old', exist_ok=True)
        out(chroot=errno_of(os.chroot, '/tmp/jail'), pivot_root=call('pivot_root', b'/tmp/jail', b'/tmp/jail/old'),
            up_is_root=(up.st_dev, up.st_ino) == (root.st_dev, root.st_ino))
        """,
    )
    assert seen["chroot"] == seen["pivot_root"] == E.EPERM and seen["up_is_root"] is True, seen


def test_open_by_handle_at_is_refused(env, box):
    seen = probe(
        box,
        """
        class Handle(ctypes.Structure):
            _fields_ = [('bytes', ctypes.c_uint), ('type', ctypes.c_int), ('f', ctypes.c_ubyte * 128)]
        h, mount_id = Handle(128, 0), ctypes.c_int(0)
        name = call('name_to_handle_at', -100, b'/etc/hostname', ctypes.byref(h), ctypes.byref(mount_id), 0)
        # the "shocker" handle: inode 2 (the root of an ext4 filesystem) of whatever holds '/'
        shock = Handle(8, 1)
        shock.f[0] = 2
        fd = os.open('/', os.O_RDONLY)
        opened = call('open_by_handle_at', fd, ctypes.byref(shock), os.O_RDONLY)
        out(name_to_handle=name, open_by_handle=opened)
        """,
    )
    # runsc: gVisor implements neither (ENOSYS) or refuses file handles on its filesystems
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.ENOSYS, E.EOPNOTSUPP})
    assert seen["name_to_handle"] in allowed and seen["open_by_handle"] in allowed, seen


def test_userfaultfd_is_refused(env, box):
    seen = probe(box, "out(uffd=call('userfaultfd', os.O_CLOEXEC), uffd_user=call('userfaultfd', 1))")
    # runsc: gVisor has no userfaultfd (ENOSYS)
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.ENOSYS})
    assert seen["uffd"] in allowed and seen["uffd_user"] in allowed, seen


def test_keyrings_bpf_and_perf_are_refused(env, box):
    seen = probe(
        box,
        """
        attr = ctypes.create_string_buffer(128)
        ctypes.c_uint.from_buffer(attr, 0).value = 1  # BPF_MAP_TYPE_HASH / PERF_TYPE_SOFTWARE
        ctypes.c_uint.from_buffer(attr, 4).value = 112  # perf_event_attr.size / map key size
        out(keyctl=call('keyctl', 1, b'vivace-escape'),  # KEYCTL_JOIN_SESSION_KEYRING
            add_key=call('add_key', b'user', b'vivace-escape', b'x', 1, -2),
            request_key=call('request_key', b'user', b'vivace-escape', None, -2),
            bpf_map=call('bpf', 0, attr, 128), bpf_prog=call('bpf', 5, attr, 128),
            perf=call('perf_event_open', attr, 0, -1, -1, 0))
        """,
    )
    # runsc: gVisor has no bpf (ENOSYS), no perf events (ENODEV/ENOSYS) and its keyrings are its own
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.ENOSYS, E.ENODEV, E.EACCES})
    assert all(v in allowed for v in seen.values()), seen


def test_port_io_is_refused(env, box):
    seen = probe(box, "out(iopl=call('iopl', 3), ioperm=call('ioperm', 0x80, 1, 1))")
    # runsc: gVisor has no port I/O (EPERM or ENOSYS)
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.ENOSYS})
    assert seen["iopl"] in allowed and seen["ioperm"] in allowed, seen


def test_clock_cannot_be_set(env, box):
    host_offset = time.time() - time.monotonic()
    seen = probe(
        box,
        """
        class TS(ctypes.Structure):
            _fields_ = [('s', ctypes.c_long), ('ns', ctypes.c_long)]
        now = TS()
        libc.clock_gettime(0, ctypes.byref(now))  # set it to what it is: a no-op, should it ever pass
        st = call('clock_settime', 0, ctypes.byref(now))
        tv = (ctypes.c_long * 2)(now.s, now.ns // 1000)
        tod = call('settimeofday', tv, None)
        timex = ctypes.create_string_buffer(256)
        ctypes.c_uint.from_buffer(timex, 0).value = 0x4000  # ADJ_TICK with tick 0: EINVAL if allowed
        out(clock_settime=st, settimeofday=tod, adjtimex=call('adjtimex', timex))
        """,
    )
    assert seen == dict.fromkeys(seen, E.EPERM), seen
    assert abs((time.time() - time.monotonic()) - host_offset) < 1.0  # the host's clock was not stepped


def test_hostname_cannot_be_changed(env, box):
    seen = probe(
        box,
        """
        out(before=socket.gethostname(), sethostname=call('sethostname', b'escaped', 7),
            setdomainname=call('setdomainname', b'escaped', 7), after=socket.gethostname())
        """,
    )
    assert seen["sethostname"] == seen["setdomainname"] == E.EPERM, seen
    assert seen["before"] == seen["after"] != env.hostname, seen
    assert socket.gethostname() == env.hostname
    # control: in a throwaway UTS namespace with the capability, the same call works
    control = subprocess.run(
        ["unshare", "--uts", sys.executable, "-c",
         "import socket; socket.sethostname('decoy'); print(socket.gethostname())"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert control.stdout.strip() == "decoy", control.stderr
    assert socket.gethostname() == env.hostname


def test_oom_score_cannot_be_lowered(env, box):
    seen = probe(
        box,
        """
        def lower():
            with open('/proc/self/oom_score_adj', 'w') as f:
                f.write('-1000')
        out(errno=errno_of(lower), value=open('/proc/self/oom_score_adj').read().strip())
        """,
    )
    if env.runtime == "crun":  # lowering it needs CAP_SYS_RESOURCE
        assert seen["errno"] in (E.EACCES, E.EPERM) and seen["value"] != "-1000", seen
    # runsc: the value is gVisor's own bookkeeping; on the host no process of the sandbox was shielded
    for pid in env.fp.container_cgroups()[container_id(box)]:
        with contextlib.suppress(OSError):
            assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) >= 0, (pid, seen)


def test_shared_files_are_read_only(env, box):
    seen = probe(
        box,
        """
        def append(p):
            with open(p, 'ab') as f:
                f.write(b'# escaped')
        out(runtime=errno_of(append, '/opt/vivace/runtime/vivace/__init__.py'),
            runtime_new=errno_of(open, '/opt/vivace/runtime/escape.txt', 'w'),
            resolv=errno_of(append, '/etc/resolv.conf'),
            mounts={m.split()[4]: m.split()[5] for m in open('/proc/self/mountinfo')})
        """,
    )
    # the runtime bundle and resolv.conf are the worker's files, shared by every container: read-only
    # mounts (EROFS), of read-only files (EACCES first, for root without CAP_DAC_OVERRIDE)
    mounts = seen.pop("mounts")
    assert all(v in (E.EROFS, E.EACCES, E.EPERM) for v in seen.values()), seen
    assert seen["runtime_new"] == E.EROFS, seen
    for path in ("/opt/vivace/runtime", "/etc/resolv.conf"):
        assert "ro" in mounts[path].split(","), mounts


def test_the_shared_base_image_cannot_be_poisoned(env):
    with scratch(env) as sb:
        seen = probe(
            sb,
            """
            import json as victim  # os and the like are frozen into the interpreter: json is read from disk
            with open(victim.__file__, 'a') as f:
                f.write('\\nPOISONED = True\\n')
            out(path=victim.__file__)
            """,
        )
        _, stdout, _ = run(sb, "out(p=hasattr(json, 'POISONED'))")
        assert json.loads(stdout)["p"] is True  # control: its own copy is changed
        bases = list((env.cluster.home / "worker" / "images").glob("base-*/rootfs"))
        assert bases
        for base in bases:
            assert b"POISONED" not in (base / seen["path"].lstrip("/")).read_bytes()
    _, stdout, _ = run(env.bystander, "out(p=hasattr(json, 'POISONED'))")
    assert json.loads(stdout)["p"] is False


# -- the network --------------------------------------------------------------------------------------
def test_raw_and_packet_sockets_are_refused(env, box):
    seen = probe(
        box,
        """
        def sock(*a):
            socket.socket(*a).close()
        out(packet=errno_of(sock, socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
            packet_dgram=errno_of(sock, socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300),
            raw_icmp=errno_of(sock, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
            raw_ip=errno_of(sock, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
            raw6=errno_of(sock, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW))
        """,
    )
    # runsc: gVisor refuses raw sockets without CAP_NET_RAW (and --net-raw), or has no such family
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.EAFNOSUPPORT, E.ESOCKTNOSUPPORT})
    assert all(v in allowed for v in seen.values()), seen


def test_network_configuration_cannot_be_changed(env, box):
    seen = probe(
        box,
        """
        import fcntl, struct
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        req = struct.pack('16sH22x', b'lo', 0)
        flags = struct.unpack('16sH22x', fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
        res = dict(flags=errno_of(fcntl.ioctl, s, 0x8914, struct.pack('16sH22x', b'lo', flags)),
                   mtu=errno_of(fcntl.ioctl, s, 0x8922, struct.pack('16si20x', b'lo', 65536)))
        out(**res)
        """,
    )
    # setting an interface's flags or MTU (the same values) needs CAP_NET_ADMIN; runsc: gVisor has no
    # such ioctl on its sockets at all (ENOTTY)
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.ENOTTY})
    assert seen["flags"] in allowed and seen["mtu"] in allowed, seen


def test_host_services_are_unreachable(env, box, host_listener, test_host):
    with socket.create_connection(("127.0.0.1", host_listener), timeout=10) as s:
        assert s.recv(16) == b"host"  # control: the listener answers on the host
    addr, port = test_host
    assert probe(box, f"out(r=connect({addr!r}, {port}, 20))", prelude=PRELUDE + CONNECT) == {
        "r": "connected:hello"
    }  # control: the sandbox's network works (a host of the test's, in its own namespace)
    _, gateway = address_of(env, box)
    targets = [gateway, "127.0.0.1", *host_addresses()]
    seen = probe(
        box, f"out(**{{t: connect(t, {host_listener}) for t in {targets!r}}})", prelude=PRELUDE + CONNECT
    )
    assert all(v in UNREACHABLE for v in seen.values()), seen
    assert seen["127.0.0.1"] == "ECONNREFUSED", seen  # its own loopback, where nothing listens


def test_control_plane_is_unreachable(env, box):
    port = env.cluster.port
    _, gateway = address_of(env, box)
    targets = [gateway, "127.0.0.1", *host_addresses()]
    seen = probe(box, f"out(**{{t: connect(t, {port}) for t in {targets!r}}})", prelude=PRELUDE + CONNECT)
    assert all(v in UNREACHABLE for v in seen.values()), seen


def test_other_sandboxes_are_unreachable(env, box, peer):
    other, peer_addr = peer
    own = probe(other, f"out(r=connect({peer_addr!r}, {PEER_PORT}, 20))", prelude=PRELUDE + CONNECT)
    assert own == {"r": "connected:peer"}  # control: the peer serves on its address
    seen = probe(box, f"out(r=connect({peer_addr!r}, {PEER_PORT}))", prelude=PRELUDE + CONNECT)
    assert seen["r"] in UNREACHABLE, seen
    # the bystander's address, where nothing listens: no answer at all (dropped), not a refusal
    by_addr, _ = address_of(env, env.bystander)
    seen = probe(box, f"out(r=connect({by_addr!r}, {PEER_PORT}))", prelude=PRELUDE + CONNECT)
    assert seen["r"] in UNREACHABLE - {"ECONNREFUSED"}, seen


def test_an_outbound_allowlist_cannot_reopen_the_host_or_other_sandboxes(env, peer, host_listener, test_host):
    addr, port = test_host
    _, peer_addr = peer
    # it asks for the forbidden too: every sandbox address and gateway (10.213/16), the host's addresses
    allow = [f"{addr}/32", "10.213.0.0/16", *(f"{h}/32" for h in host_addresses())]
    with scratch(env, outbound_cidr_allowlist=allow) as sb:
        _, gateway = address_of(env, sb)
        targets = {"test_host": (addr, port, 20), "peer": (peer_addr, PEER_PORT, 1.5)}
        targets.update({f"host {h}": (h, host_listener, 1.5) for h in [gateway, *host_addresses()]})
        targets["control plane"] = (gateway, env.cluster.port, 1.5)
        code = f"out(**{{k: connect(*target) for k, target in {targets!r}.items()}})"
        seen = probe(sb, code, prelude=PRELUDE + CONNECT)
    assert seen.pop("test_host") == "connected:hello", seen  # control: the allowlist lets it through
    assert all(v in UNREACHABLE for v in seen.values()), seen


def test_blocked_sandbox_has_only_loopback(env, test_host, box):
    addr, port = test_host
    box_addr, _ = address_of(env, box)
    code = f"""
    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)
    loop = socket.create_connection(s.getsockname(), timeout=5)  # control: loopback works
    loop.close(); s.close()
    out(outside=connect({addr!r}, {port}), sandbox=connect({box_addr!r}, 22))
    """
    with scratch(env, block_network=True) as sb:
        seen = probe(sb, code, prelude=PRELUDE + CONNECT)
    assert seen["outside"] in UNREACHABLE and seen["sandbox"] in UNREACHABLE, seen


def test_no_vivace_socket_or_tokens_inside(env, box):
    seen = probe(
        box,
        """
        env = dict(os.environ)
        init = dict(l.split('=', 1) for l in open('/proc/1/environ').read().split('\\0') if '=' in l)
        try:
            unix = [l.split()[-1] for l in open('/proc/net/unix').read().splitlines()[1:] if len(l.split()) > 7]
        except OSError:
            unix = []
        out(sock=errno_of(os.stat, '/run/vivace/vivace.sock'), run_vivace=errno_of(os.stat, '/run/vivace'),
            env=sorted(k for k in env if 'VIVACE' in k or 'MODAL' in k or 'TOKEN' in k),
            init=sorted(k for k in init if 'VIVACE' in k or 'MODAL' in k or 'TOKEN' in k),
            unix=[u for u in unix if 'vivace' in u])
        """,
    )
    assert seen["sock"] == seen["run_vivace"] == E.ENOENT, seen
    ids = ["MODAL_TASK_ID", "VIVACE_TASK_ID"]  # its own id: no token, no socket, no server address
    assert seen["env"] == ids and seen["init"] == ids and seen["unix"] == [], seen


# -- afterwards ---------------------------------------------------------------------------------------
def test_zz_host_bystander_and_worker_unaffected(env, box, host_decoy):
    """Last of the module: the bystander and the host came through, and the worker kept exactly the
    sandboxes still running."""
    seen = probe(env.bystander, "out(marker=open('/root/marker.txt').read(), pid1=os.path.exists('/proc/1'))")
    assert seen == {"marker": "still here", "pid1": True}
    assert env.bystander.poll() is None and box.poll() is None
    assert host_decoy.poll() is None
    assert socket.gethostname() == env.hostname
    wait_for(
        lambda: all(sb.poll() is not None for sb in env.finished), "the tests' own sandboxes to end", 120
    )
    live = {container_id(sb) for sb in env.live}
    wait_for(lambda: set(env.fp.container_cgroups()) == live, "only the live sandboxes' cgroups", 120)
    gone = {container_id(sb) for sb in env.finished}
    assert not [m for m in env.fp.mounts() if any(c in str(m) for c in gone)]
