"""Escape attempts: the host's files, ``/proc`` and ``/sys``."""

from __future__ import annotations

import errno as E
import hashlib
import json
import platform
from pathlib import Path

import pytest

from vivace import exception as exc

from .kit import (
    per_runtime,
    probe,
    run,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


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
