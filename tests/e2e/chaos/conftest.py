"""Fixtures for chaos tests: ``cluster`` starts processes on demand and kills them all on teardown."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos_cluster import Cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slow end-to-end tests (chaos: kill -9 of each process)")


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    home = Path(tempfile.mkdtemp(prefix="vc-"))
    c = Cluster(home)
    try:
        yield c
    finally:
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        leftovers = c.close()
        still = c.container_pids()
        if failed:
            sys.stderr.write(f"\n[chaos] {c.diagnostics()}\n")
        if os.environ.get("VIVACE_CHAOS_KEEP"):
            sys.stderr.write(f"\n[chaos] home kept in {home} (leftover containers killed: {leftovers})\n")
        else:
            shutil.rmtree(home, ignore_errors=True)
        assert not still, f"container processes survived teardown: {still}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
