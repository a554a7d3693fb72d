import importlib.util
import os
import sys
from pathlib import Path

import pytest

from vivace.testing.cluster import LocalCluster

APPS = Path(__file__).parent / "apps"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("vivace")
    # the worker inherits this: a frozen container is detected in seconds (default 30 s)
    os.environ.setdefault("VIVACE_CONTAINER_HEARTBEAT_TIMEOUT", "4")
    # these tests are about the call path and share files with their functions through the host:
    # isolation has its own suite (tests/isolation), run on every OCI runtime the host has
    with LocalCluster(home, runtimes=["process"]) as c:
        old = {k: os.environ.get(k) for k in c.client_env()}
        os.environ.update(c.client_env())
        yield c
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_app(name):
    """Import tests/integration/apps/NAME.py under its own module name, as `vivace run` does."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, APPS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def app_loader(cluster):
    return load_app


@pytest.fixture
def app_loader_unbound():
    """``load_app`` without starting the shared SQLite cluster."""
    return load_app


@pytest.fixture
def user_http(cluster):
    """An HTTP client for the cluster's API with the user token."""
    import httpx

    from vivace._version import __version__

    headers = {"authorization": f"Bearer {cluster.user_token}", "x-vivace-version": __version__}
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=30) as c:
        yield c


def run_cli(*args, ok=True):
    """``vivace ARGS...`` in a subprocess against the cluster (the environment points at it); checks
    that it succeeded (``ok``) or failed."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert (out.returncode == 0) == ok, out.stdout + out.stderr
    return out
