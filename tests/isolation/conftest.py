"""The isolation suite runs once per isolating runtime this host has (crun, runc, runsc, bwrap; here
as root); in CI all of them must be installed (``.ci/install-runtimes.sh``)."""

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import sdk_pointed_at
from vivace.testing.cluster import LocalCluster
from vivace.worker.cgroups import detect
from vivace.worker.runtimes.oci import mounted_under

RUNTIMES = ("crun", "runc", "runsc", "bwrap")
PIDS_LIMIT = 64
WARM_POOL_RUNTIMES = ("crun", "runc", "runsc")  # the oci runtimes keep warm containers
# (runtime, warm pool size): every runtime with the worker's default pool; crun also fully cold
VARIANTS = [pytest.param((r, 2), id=r) for r in RUNTIMES] + [pytest.param(("crun", 0), id="crun-cold")]


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def warm_pool(variant):
    """How many warm containers the worker keeps (0 where the runtime has no pool)."""
    return variant[1] if variant[0] in WARM_POOL_RUNTIMES else 0


def require_runtime(name):
    """Fail under CI, skip elsewhere, where ``name`` is missing or we are not root."""
    if os.geteuid() != 0 or shutil.which(name) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} must be installed (as root) in CI: .ci/install-runtimes.sh")
        pytest.skip(f"{name} is not installed (or not root)")


def require_debootstrap():
    """Image tests build Debian roots: fail under CI, skip elsewhere, where debootstrap is missing."""
    if shutil.which("debootstrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("debootstrap must be installed in CI: .ci/install-runtimes.sh")
        pytest.skip("debootstrap is not installed")


@pytest.fixture(scope="module")
def runtime(variant):
    name = variant[0]
    require_runtime(name)
    return name


@pytest.fixture(scope="module")
def iso(runtime, warm_pool, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"iso-{runtime}-{warm_pool}")
    with LocalCluster(home, runtimes=[runtime], pids_limit=PIDS_LIMIT, warm_pool=warm_pool) as cluster:
        if warm_pool:  # start measuring from a ready pool, as a worker that has been up a while has
            fp = WorkerFootprint(home / "worker")
            wait_for(
                lambda: len([p for p in fp.container_cgroups().values() if p]) >= warm_pool, "the warm pool"
            )
        with sdk_pointed_at(cluster):
            module = _load("iso")
            with module.app.run():
                module.cluster = cluster
                yield module


def _load(name):
    import importlib.util
    import sys
    from pathlib import Path

    sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "apps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def test_host():
    """A host in a network namespace of our own, serving a greeting on TCP: (address, port).

    Never an address outside this machine: traffic leaves nowhere."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"vvtest-{tag}", f"vt{tag}", f"vp{tag}"
    host_ip, ns_ip = "10.214.77.1", "10.214.77.2"

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", host_ip)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, "python3", "-c", _SERVER, ns_ip],
            stdout=subprocess.PIPE,
            text=True,
        )
        port = int(server.stdout.readline())
        yield ns_ip, port
        server.kill()
        server.wait()
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


_SERVER = """
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hello"); c.close()
"""


@pytest.fixture
def host_listener():
    """A service on the host itself (all addresses), which containers must not reach: its port."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 0))
    s.listen(16)
    stop = threading.Event()

    def serve():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = s.accept()
            except OSError:
                continue
            c.sendall(b"host")
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join()
    s.close()


class WorkerFootprint:
    """Everything on the host that carries one worker's key."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.key = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:10]
        self.cgroups = detect()

    def container_cgroups(self) -> dict[str, set[int]]:
        """Container cgroup name -> the processes in it."""
        found: dict[str, set[int]] = {}
        for root in self.cgroups.roots():
            base = root / "vivace" / self.key
            if not base.is_dir():
                continue
            for d in base.iterdir():
                if not d.is_dir():
                    continue
                pids = found.setdefault(d.name, set())
                for dirpath, _dirs, _files in os.walk(d):
                    try:
                        pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
                    except OSError:
                        pass
        return found

    def worker_cgroup_dirs(self) -> list[Path]:
        return [
            root / "vivace" / self.key
            for root in self.cgroups.roots()
            if (root / "vivace" / self.key).exists()
        ]

    def mounts(self) -> list[Path]:
        return mounted_under(self.workdir) + mounted_under(Path("/run/vivace") / self.key)

    def namespaces(self) -> list[str]:
        netns = Path("/run/netns")
        return (
            sorted(p.name for p in netns.iterdir() if p.name.startswith(f"vv{self.key[:6]}-"))
            if netns.exists()
            else []
        )

    def links(self) -> list[str]:
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if f"vh{self.key[:6]}" in line]

    def chains(self) -> list[str]:
        found = []
        for table in ("filter", "nat"):
            out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
            found += [line for line in out.splitlines() if self.key[:6] in line]
        return found

    def state(self) -> list[Path]:
        root = Path("/run/vivace") / self.key
        return list(root.rglob("*")) if root.exists() else []


def wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def replace_worker(cluster, name):
    """Stop the cluster's worker, retire every worker in the store, and start a new one with its own
    (empty) state directory ``home/name``."""
    from vivace.server.services import workers

    first = cluster.worker
    first.terminate()
    first.wait(timeout=60)
    old = cluster.plane.store.write_sync(lambda tx: [r[0] for r in tx.fetchall("SELECT id FROM workers")])
    cluster.plane.store.write_sync(lambda tx: [workers.retire(tx, w, "test: stopped") for w in old])
    cluster.start_worker(name)
