"""The sandbox escape suite's fixtures: one cluster per runtime for the whole suite (session scope, so the
files share it), the long-lived sandboxes the attacks run in, and what they must not touch."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import uuid

import pytest

import vivace
from vivace import exception as exc
from vivace.testing.cluster import LocalCluster

from ..conftest import WorkerFootprint, require_runtime, sdk_pointed_at
from .kit import (
    PEER_PORT,
    PIDS_LIMIT,
    RUNTIMES,
    Env,
    address_of,
)


@pytest.fixture(scope="session", params=RUNTIMES)
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


@pytest.fixture(scope="session")
def box(env):
    """The sandbox most attacks run in: open network, default limits."""
    sb = vivace.Sandbox.create(app=env.app, timeout=1800)
    env.live.append(sb)
    return sb


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def canary(tmp_path_factory):
    """A file on the host with content no sandbox may ever see: (path, content)."""
    path = tmp_path_factory.mktemp("canary") / "host-canary.txt"
    content = f"host-canary-{uuid.uuid4().hex}"
    path.write_text(content)
    return path, content


@pytest.fixture(scope="session")
def host_decoy():
    """A host process the tests own, which no attack may touch."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    yield proc
    proc.kill()
    proc.wait()
