"""Escape attempts: mounts, cgroups, namespaces and processes (signals, ptrace, bombs)."""

from __future__ import annotations

import errno as E
import hashlib
import json
import os
import subprocess
import sys

import pytest

import vivace

from .kit import (
    PIDS_LIMIT,
    PRELUDE,
    RUNSC_NO_SECCOMP,
    memory_cap,
    per_runtime,
    probe,
    run,
    scratch,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


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
