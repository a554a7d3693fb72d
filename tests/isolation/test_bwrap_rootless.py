"""A worker that is not root (uid 65534) runs functions isolated with bwrap: its own root filesystem,
pid namespace, no capabilities, block_network honoured, exec inside the container with no more than the
function has, and containers that die with the worker.

Without root there are no cgroup limits on this host (no delegated cgroup v2 subtree) and containers
share the host's network: the tests check what the capabilities say, no more."""

import asyncio
import os
import shutil
import signal
import site
import stat
import sys
import tempfile
import time
from pathlib import Path

import pytest

import vivace
from tests.isolation.conftest import _load, sdk_pointed_at
from vivace.client import ApiClient, Credentials
from vivace.testing.cluster import LocalCluster

pytestmark = pytest.mark.timeout(240)
NOBODY = 65534


def _reachable_by_others(path: Path) -> bool:
    """Whether a user with no relation to the owners of ``path`` and its parents can reach it."""
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in Path(os.path.realpath(path)).parents)


def _wrapper(stage: Path) -> list[str]:
    """How to let uid 65534 run this very interpreter when it lives under a private directory (pyenv in
    /root, say): in a mount namespace of the worker's own, a tmpfs over that directory holds only the
    interpreter's installation, bound back read-only. Nothing changes on the host."""
    prefix = Path(os.path.realpath(sys.base_prefix))
    if _reachable_by_others(prefix / "bin"):
        return []
    hidden = next(d for d in reversed([prefix, *prefix.parents]) if not os.stat(d).st_mode & stat.S_IXOTH)
    script = (
        "set -e; "
        f"mount --bind {prefix} {stage}; "
        f"mount -t tmpfs -o mode=0755,size=1m tmpfs {hidden}; "
        f"mkdir -p {prefix}; "
        f"mount --bind -o ro {stage} {prefix}; "
        'exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]


@pytest.fixture(scope="module")
def rootless():
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bwrap must be installed (as root) in CI: .ci/install-runtimes.sh")
        pytest.skip("bwrap is not installed (or not root: the test switches to uid 65534)")
    for p in (Path(vivace.__file__), *map(Path, site.getsitepackages())):
        if not _reachable_by_others(p):
            pytest.fail(f"{p} must be readable by other users for a worker that is not root")
    # a home the worker can traverse (pytest's own tmp is private to root); the control plane's files
    # in it stay root's
    home = Path(tempfile.mkdtemp(prefix="vivace-rootless-"))
    home.chmod(0o711)
    (home / "stage").mkdir()
    try:
        cluster = LocalCluster(
            home,
            runtimes=["bwrap"],
            worker_user=NOBODY,
            worker_wrapper=_wrapper(home / "stage"),
            pids_limit=64,
        )
        with cluster, sdk_pointed_at(cluster):
            module = _load("iso")
            with module.app.run():
                module.cluster = cluster
                yield module
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _descendants(pid):
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        found += map(int, children)
        todo += map(int, children)
    return found


def _uid(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def _containers(cluster):
    """Host pids of the worker's bwrap processes and what runs under them."""
    return [p for p in _descendants(cluster.worker.pid) if Path(f"/proc/{p}").exists()]


def test_function_runs_isolated_without_root(rootless):
    root = rootless.listdir.remote("/")
    assert "opt" in root and "src" in root
    assert "work" not in root and "home" not in root  # nothing of the host's /
    # the control plane's files (credentials included) are not there, nor the host's secrets
    assert rootless.read.remote(str(rootless.cluster.home / "credentials.json")) == "FileNotFoundError"
    assert rootless.listdir.remote(str(rootless.cluster.home)) == "FileNotFoundError"
    assert rootless.read.remote("/etc/shadow") == "FileNotFoundError"
    assert "iso.py" in rootless.listdir.remote("/src")
    pids = rootless.processes.remote()
    assert pids[0] == 1 and len(pids) < 10, pids  # own pid namespace: no host processes
    r = rootless.privileged_ops.remote()
    assert r["mount"] is False and r["unshare_user"] is False and r["chown"] is False
    assert int(r["cap_eff"], 16) == 0 and r["no_new_privs"] == "1"
    # on the host, everything the worker started runs as the worker's unprivileged user
    procs = _containers(rootless.cluster)
    assert any(Path(f"/proc/{p}/comm").read_text().strip() == "bwrap" for p in procs), procs
    assert {_uid(p) for p in procs} == {NOBODY}


def test_block_network_without_root(rootless, host_listener):
    # not root: no namespace pool, so a container shares the host's network (capabilities say so) ...
    assert rootless.connect.remote("127.0.0.1", host_listener) == "host"
    # ... except with block_network=True: a network namespace with loopback only
    assert rootless.connect_blocked.remote("127.0.0.1", host_listener) == "ConnectionRefusedError"


def _exec(cluster, cid, argv):
    async def go():
        api = ApiClient(cluster.url, Credentials.parse(cluster.user_token), retry_for=5)
        try:
            return await api.post_json(
                f"/v1/containers/{cid}/exec", {"argv": argv, "timeout": 20}, timeout=60
            )
        finally:
            await api.aclose()

    return asyncio.run(go())


def test_exec_runs_inside_the_container_with_nothing_more(rootless):
    cid = rootless.identity.remote()["task_id"]  # a container that is up
    probe = (
        "import os, socket; s = dict(l.split(':', 1) for l in open('/proc/self/status'));"
        "print(socket.gethostname(), os.getuid(), os.path.exists('/src/iso.py'), s['CapEff'].strip(),"
        " s['NoNewPrivs'].strip(), s['Seccomp'].strip(), os.environ['MODAL_TASK_ID'], os.getpid() < 100)"
    )
    r = _exec(rootless.cluster, cid, ["python3", "-c", probe])
    assert r["returncode"] == 0, r
    assert r["stdout"].split() == ["vivace", "0", "True", "0000000000000000", "1", "2", cid, "True"], r
    assert _exec(rootless.cluster, cid, ["sh", "-c", "exit 3"])["returncode"] == 3


def test_containers_die_with_a_killed_worker(rootless):
    assert rootless.listdir.remote("/src")  # a container is up
    before = _containers(rootless.cluster)
    assert before
    rootless.cluster.worker.send_signal(signal.SIGKILL)  # no chance to clean up
    rootless.cluster.worker.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in before if Path(f"/proc/{p}").exists()], "containers outlived their worker"
    rootless.cluster.start_worker()  # and a restarted worker runs functions again
    assert "iso.py" in rootless.listdir.remote("/src")
