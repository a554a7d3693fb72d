"""Pure pieces of isolation: cgroup layout detection, the OCI config, the seccomp profile."""

from pathlib import Path

import pytest

from vivace.worker.cgroups import CgroupError, detect
from vivace.worker.runtimes.base import ContainerSpec
from vivace.worker.runtimes.oci import oci_config
from vivace.worker.runtimes.security import seccomp_profile

V1 = """\
25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
29 25 0:26 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
"""
HYBRID = V1 + "30 25 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
V2 = "30 1 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_detects_v1_hybrid_and_v2(tmp_path):
    v1 = detect(V1)
    assert v1.mode == "v1" and v1.mounts["cpu"] == Path("/sys/fs/cgroup/cpu,cpuacct") and not v1.missing
    assert Path("/sys/fs/cgroup/systemd") in v1.roots()
    hybrid = detect(HYBRID)
    assert hybrid.mode == "hybrid" and hybrid.unified_mount == Path("/sys/fs/cgroup/unified")
    assert Path("/sys/fs/cgroup/unified") in hybrid.roots()
    v2 = detect(V2)
    assert v2.mode == "v2" and v2.unified and v2.mounts == {"": Path("/sys/fs/cgroup")}
    assert v1.cpuacct is None  # co-mounted with cpu: accounting is read there
    apart = detect(V1.replace("/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct", "/cpu rw - cgroup cgroup rw,cpu")
                   + "31 25 0:28 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n")  # fmt: skip
    assert apart.cpuacct == Path("/sys/fs/cgroup/cpuacct") and apart.mounts["cpu"] == Path(
        "/sys/fs/cgroup/cpu"
    )
    only_memory = detect("26 25 0:23 / /m rw - cgroup cgroup rw,memory\n")
    assert only_memory.missing == ("cpu", "pids")
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        detect("1 0 0:1 / / rw - ext4 /dev/sda rw\n")


def _config(**kw):
    spec = ContainerSpec(
        container_id="ta-1",
        workdir=Path("/w/ta-1"),
        socket_path=Path("/w/ta-1/sock/vivace.sock"),
        source_dir=kw.pop("source_dir", Path("/w/sources/abc")),
        env={"USER_VAR": "1", "VIVACE_SECRET_TRICK": "x"},
    )
    return oci_config(
        spec, cgroups_path="/vivace/k/ta-1/ctr", runtime_bundle=Path("/w/images/rt"), rlimit_nofile=1024, **kw
    )


def test_oci_config_names_only_what_the_container_needs():
    c = _config(netns=None)
    sources = {m["source"] for m in c["mounts"] if m["type"] == "bind"}
    assert sources == {"/w/ta-1/sock", "/w/images/rt", "/w/sources/abc"}  # nothing else of the host
    assert all("ro" in m["options"] for m in c["mounts"] if m["type"] == "bind")
    env = dict(e.split("=", 1) for e in c["process"]["env"])
    assert env["USER_VAR"] == "1" and "VIVACE_SECRET_TRICK" not in env
    assert (
        env["VIVACE_SOCKET"] == "/run/vivace/vivace.sock" and env["PYTHONPATH"] == "/src:/opt/vivace/runtime"
    )
    assert all(v == [] for v in c["process"]["capabilities"].values())
    assert c["process"]["noNewPrivileges"] is True
    assert {"type": "network"} in c["linux"]["namespaces"]
    assert c["linux"]["cgroupsPath"] == "/vivace/k/ta-1/ctr"
    assert c["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]


def test_oci_config_joins_a_prepared_network_namespace():
    c = _config(netns="/run/netns/vvabc-1", resolv_conf=Path("/w/resolv.conf"), source_dir=None)
    assert {"type": "network", "path": "/run/netns/vvabc-1"} in c["linux"]["namespaces"]
    assert any(m["destination"] == "/etc/resolv.conf" for m in c["mounts"])
    assert not any(m["destination"] == "/src" for m in c["mounts"])


def test_oci_config_with_a_user_namespace_maps_root_to_an_unprivileged_range():
    from vivace.worker import idmap

    c = _config(netns="/run/netns/vvabc-1", userns=True, root_path="/run/vivace/k/roots/ta-1")
    assert {"type": "user"} in c["linux"]["namespaces"]
    want = [{"containerID": 0, "hostID": idmap.HOST_BASE, "size": idmap.SIZE}]
    assert c["linux"]["uidMappings"] == want == c["linux"]["gidMappings"]
    assert idmap.HOST_BASE > 0
    assert c["root"]["path"] == "/run/vivace/k/roots/ta-1"
    # a joined network namespace belongs to the host's user namespace: /sys is bound read-only instead
    sys_mount = next(m for m in c["mounts"] if m["destination"] == "/sys")
    assert sys_mount["type"] == "bind" and "ro" in sys_mount["options"]
    plain = _config(netns=None)
    assert {"type": "user"} not in plain["linux"]["namespaces"] and "uidMappings" not in plain["linux"]
    assert next(m for m in plain["mounts"] if m["destination"] == "/sys")["type"] == "sysfs"


def test_seccomp_refuses_mounts_and_namespace_clones():
    p = seccomp_profile()
    denied = p["syscalls"][0]["names"]
    assert {"mount", "unshare", "setns", "bpf", "kexec_load", "ptrace"} <= set(denied)
    clone_rules = [r for r in p["syscalls"] if r["names"] == ["clone"]]
    assert len(clone_rules) == 7 and all(r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" for r in clone_rules)
    # a plain fork/thread clone carries none of the namespace flags
    thread_flags = 0x3D0F00
    assert not any(thread_flags & r["args"][0]["value"] for r in clone_rules)
