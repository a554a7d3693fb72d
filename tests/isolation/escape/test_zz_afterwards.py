"""After every attack on a runtime (this file sorts last): the host, a bystander sandbox and the worker are
unaffected."""

from __future__ import annotations

import socket

import pytest

from ..conftest import wait_for
from .kit import (
    container_id,
    probe,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


# -- afterwards ---------------------------------------------------------------------------------------
def test_zz_host_bystander_and_worker_unaffected(env, box, host_decoy):
    """Last of the module: the bystander and the host came through, and the worker kept exactly the
    sandboxes still running."""
    seen = probe(env.bystander, "out(marker=open('/root/marker.txt').read(), pid1=os.path.exists('/proc/1'))")
    assert seen == {"marker": "still here", "pid1": True}
    assert env.bystander.poll() is None and box.poll() is None
    assert host_decoy.poll() is None
    assert socket.gethostname() == env.hostname
    wait_for(
        lambda: all(sb.poll() is not None for sb in env.finished), "the tests' own sandboxes to end", 120
    )
    live = {container_id(sb) for sb in env.live}
    wait_for(lambda: set(env.fp.container_cgroups()) == live, "only the live sandboxes' cgroups", 120)
    gone = {container_id(sb) for sb in env.finished}
    assert not [m for m in env.fp.mounts() if any(c in str(m) for c in gone)]
