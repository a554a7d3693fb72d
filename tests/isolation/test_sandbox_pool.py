"""Warm sandboxes (``vivace worker --warm-pool N``, runsc and crun): a sandbox that fits one is handed a
pre-created container whose stub execs its command as PID 1, with its environment, directory, stdin,
limits and outbound allowlist; exec'd processes inherit its environment; nothing is left afterwards."""

import pytest

import vivace
from vivace import exception as exc
from vivace.testing.cluster import LocalCluster

from .conftest import WorkerFootprint, require_runtime, sdk_pointed_at, wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]
PY = "python3"


@pytest.fixture(scope="module", params=["runsc", "crun"])
def pooled(request, tmp_path_factory):
    rt = request.param
    require_runtime(rt)
    home = tmp_path_factory.mktemp(f"pool-{rt}")
    fp = WorkerFootprint(home / "worker")
    with LocalCluster(home, runtimes=[rt], warm_pool=2) as cluster, sdk_pointed_at(cluster):
        log = home / "worker.log"
        wait_for(lambda: _idle(log) >= 2, "two warm sandboxes", 60)
        yield vivace.App.lookup(f"pool-{rt}", create_if_missing=True), log
    assert fp.container_cgroups() == {} and fp.mounts() == [] and fp.namespaces() == []


def _idle(log):
    """Warm sandboxes ready and not yet handed over, from the worker's log."""
    text = log.read_text()
    return text.count("container warm-sb") - text.count("started from warm")


def _handed_over(log, sb):
    cid = vivace.Sandbox.from_id(sb.object_id)._info["container_id"]
    return f"container {cid}: started from warm" in log.read_text()


def test_a_warm_sandbox_runs_the_command_as_pid_1_with_its_settings(pooled):
    app, log = pooled
    code = "import os, sys; print(os.getpid(), os.getcwd(), os.environ['MODE'], sys.stdin.readline().strip())"
    sb = vivace.Sandbox.create(PY, "-c", code, app=app, env={"MODE": "warm"}, workdir="/tmp")
    sb.stdin.write(b"typed\n")
    sb.stdin.drain()
    sb.wait()
    sb = vivace.Sandbox.from_id(sb.object_id)
    assert sb.returncode == 0
    assert sb.stdout.read() == "1 /tmp warm typed\n"
    assert _handed_over(log, sb)


def test_an_idle_warm_sandbox_takes_execs_with_its_environment_and_limits(pooled):
    app, log = pooled
    wait_for(lambda: _idle(log) >= 1, "the pool to refill", 60)
    sb = vivace.Sandbox.create(app=app, env={"MODE": "idle"}, memory=(64, 64))
    try:
        p = sb.exec(PY, "-c", "import os; print(os.environ['MODE'], 'VIVACE_WARM' in os.environ)")
        assert p.stdout.read() == "idle False\n"
        assert _handed_over(log, sb)
        hog = sb.exec(PY, "-c", "x = bytearray(256 << 20); x[::4096] = b'1' * len(x[::4096])")
        assert hog.wait() != 0  # the sandbox's own memory limit, written to the warm container's cgroup
    finally:
        sb.terminate()
    with pytest.raises(exc.SandboxTerminatedError):
        sb.wait()


def test_a_missing_command_exits_127(pooled):
    app, log = pooled
    wait_for(lambda: _idle(log) >= 1, "the pool to refill", 60)
    sb = vivace.Sandbox.create("no-such-command", app=app)
    sb.wait()
    assert _handed_over(log, sb)
    assert sb.returncode == 127  # as a shell says it
    assert "no-such-command" in sb.stderr.read()
