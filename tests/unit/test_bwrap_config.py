"""Pure pieces of the bwrap runtime: bubblewrap's options, the compiled seccomp filter, cgroup delegation."""

import os
from pathlib import Path

import pytest

from vivace.worker.cgroups import WORKER_LEAF, delegated_subtree, detect
from vivace.worker.runtimes.base import ContainerSpec
from vivace.worker.runtimes.bwrap import bwrap_args, container_env
from vivace.worker.runtimes.seccomp import bpf_program, unavailable_reason

pytestmark = pytest.mark.timeout(10)


def _spec(**kw):
    return ContainerSpec(
        container_id="ta-1",
        workdir=Path("/w/ta-1"),
        socket_path=Path("/w/ta-1/sock/vivace.sock"),
        source_dir=kw.pop("source_dir", Path("/w/sources/abc")),
        env={"USER_VAR": "1", "VIVACE_SECRET_TRICK": "x", "LD_PRELOAD": "/evil.so"},
        **kw,
    )


def _args(spec=None, **kw):
    kw.setdefault("unshare_net", False)
    return bwrap_args(
        spec or _spec(), base=Path("/w/images/base/rootfs"), runtime_bundle=Path("/w/images/rt"), **kw
    )


def _pairs(args, option):
    """(source, destination) of every ``option SRC DEST`` in ``args``."""
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == option]


def test_binds_only_what_the_container_needs_and_all_read_only():
    args = _args(home_entries=(".pyenv",))
    assert "--bind" not in args and "--dev-bind" not in args  # nothing of the host is writable
    assert _pairs(args, "--ro-bind") == [
        ("/w/images/base/rootfs", "/"),
        ("/w/images/base/rootfs/root/.pyenv", "/root/.pyenv"),  # an interpreter under the worker's home
        ("/w/ta-1/sock", "/run/vivace"),
        ("/w/images/rt", "/opt/vivace/runtime"),
        ("/w/sources/abc", "/src"),
    ]
    # the writable places are private: HOME and /tmp on tmpfs, and /run under the socket
    tmpfs = [args[i + 1] for i, a in enumerate(args) if a == "--tmpfs"]
    assert tmpfs == ["/tmp", "/root", "/run"]
    home = next(i for i, a in enumerate(args) if a == "--tmpfs" and args[i + 1] == "/root")
    assert home < args.index("/root/.pyenv")  # bound back after HOME is made private


def test_new_namespaces_no_capabilities_and_dies_with_its_parent():
    args = _args()
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
                 "--disable-userns", "--die-with-parent", "--new-session", "--clearenv"):  # fmt: skip
        assert flag in args, flag
    assert args[args.index("--cap-drop") + 1] == "ALL"
    assert args[args.index("--uid") + 1] == "0" and args[args.index("--gid") + 1] == "0"
    assert "--unshare-net" not in args  # joins a prepared namespace, or shares the host's (not root)
    assert "--unshare-net" in _args(unshare_net=True)
    assert "--seccomp" not in args
    with_filter = _args(seccomp_fd=7)
    assert with_filter[with_filter.index("--seccomp") + 1] == "7"


def test_environment_follows_the_oci_rules():
    args = _args()
    env = {args[i + 1]: args[i + 2] for i, a in enumerate(args) if a == "--setenv"}
    assert env == container_env(_spec())
    assert env["USER_VAR"] == "1" and "VIVACE_SECRET_TRICK" not in env
    assert (
        env["VIVACE_SOCKET"] == "/run/vivace/vivace.sock" and env["PYTHONPATH"] == "/src:/opt/vivace/runtime"
    )
    assert env["VIVACE_TASK_ID"] == env["MODAL_TASK_ID"] == "ta-1"
    assert args.index("--clearenv") < args.index("--setenv")
    # no source: no /src and nothing of it on the path
    bare = _args(_spec(source_dir=None))
    assert not any(d == "/src" for _s, d in _pairs(bare, "--ro-bind"))
    assert container_env(_spec(source_dir=None))["PYTHONPATH"] == "/opt/vivace/runtime"


def test_resolv_conf_is_bound_where_given():
    args = _args(resolv_conf=Path("/w/resolv.conf"))
    assert ("/w/resolv.conf", "/etc/resolv.conf") in _pairs(args, "--ro-bind")
    assert not any(d == "/etc/resolv.conf" for _s, d in _pairs(_args(), "--ro-bind"))


def test_seccomp_profile_compiles_to_bpf():
    why = unavailable_reason()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"libseccomp must be installed in CI: {why}")
        pytest.skip(why)
    program = bpf_program()
    assert program and len(program) % 8 == 0  # struct sock_filter: 8 bytes per instruction
    assert len(program) // 8 < 4096  # the kernel's BPF_MAXINSNS


V2 = "30 1 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_delegated_subtree_is_a_writable_v2_cgroup_with_the_controllers(tmp_path):
    host = detect(V2)
    object.__setattr__(host, "mounts", {"": tmp_path})  # a fake cgroup2 tree
    own = tmp_path / "user.slice" / "w.scope"
    own.mkdir(parents=True)
    for f in ("cgroup.procs", "cgroup.subtree_control"):
        (own / f).write_text("")
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert delegated_subtree(host, "/user.slice/w.scope") == "user.slice/w.scope"
    # a worker restarted inside the leaf it moved itself to gets the same subtree
    assert delegated_subtree(host, f"/user.slice/w.scope/{WORKER_LEAF}") == "user.slice/w.scope"
    (own / "cgroup.controllers").write_text("cpu io\n")
    assert delegated_subtree(host, "/user.slice/w.scope") is None
    assert delegated_subtree(host, "/") is None  # the root cgroup is never delegated
    assert delegated_subtree(detect("26 25 0:23 / /m rw - cgroup cgroup rw,memory\n"), "/x") is None  # v1
