"""Escape attempts: capabilities, setuid, kernel interfaces, devices, clock, hostname, shared files."""

from __future__ import annotations

import contextlib
import errno as E
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .kit import (
    container_id,
    per_runtime,
    probe,
    run,
    scratch,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


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
