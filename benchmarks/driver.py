"""Runs each peer in its own subprocess, one after another, and cleans up whatever it leaves behind.

Each peer gets a new session, so when it exits, or runs past its time limit, the processes it started
(Ray's GCS, raylet and workers, Dask's scheduler, nannies and workers, pool processes) are found by
that session's id and ended by their own. Vivace's daemon detaches, so it is stopped through its own
CLI instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks import procs, vivace_home
from benchmarks.config import RunConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_all(
    peers: Sequence[str], bench_names: Sequence[str], config: RunConfig, verbose: bool
) -> dict[str, Any]:
    """Results per peer name, in the order given."""
    results: dict[str, Any] = {}
    deadline = None if config.run_timeout_s is None else time.monotonic() + config.run_timeout_s
    for name in peers:
        started = time.perf_counter()
        timeout = config.peer_timeout_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        result = _run_one(name, bench_names, config, timeout, verbose)
        result["wall_s"] = round(time.perf_counter() - started, 2)
        _say(f"{name}: {result['status']} in {result['wall_s']:.1f}s")
        results[name] = result
    return results


def _run_one(
    name: str, bench_names: Sequence[str], config: RunConfig, timeout: float, verbose: bool
) -> dict[str, Any]:
    if timeout <= 0:
        return {"status": "timeout", "error": "the run's time budget was spent before this peer's turn"}
    _say(f"{name}: running (up to {timeout:.0f}s)")
    if name == "vivace":
        return _run_vivace(bench_names, config, timeout, verbose)
    return run_peer_process(name, bench_names, config, timeout, verbose, {})


def run_peer_process(
    name: str,
    bench_names: Sequence[str],
    config: RunConfig,
    timeout: float,
    verbose: bool,
    extra_env: dict[str, str],
) -> dict[str, Any]:
    """Run ``benchmarks.peer_runner`` for one peer and parse the JSON it prints."""
    cmd = [sys.executable, "-m", "benchmarks.peer_runner", name, ",".join(bench_names), config.to_json()]
    return run_json_process(cmd, timeout, verbose, extra_env)


def run_json_process(
    cmd: list[str], timeout: float, verbose: bool, extra_env: dict[str, str]
) -> dict[str, Any]:
    """Run ``cmd`` in a session of its own, end whatever is left of that session afterwards, and parse
    the one JSON document it prints on stdout; failures become ``status`` values. Ray's session files
    and Dask's scratch space go to a directory of the run's own, removed afterwards."""
    scratch = tempfile.mkdtemp(prefix="bench-")
    extra_env = {"RAY_TMPDIR": scratch, "DASK_TEMPORARY_DIRECTORY": scratch, **extra_env}
    try:
        return _run_json(cmd, timeout, verbose, extra_env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_json(cmd: list[str], timeout: float, verbose: bool, extra_env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=_peer_env(extra_env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=None if verbose else err,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also on Ctrl-C: the peer is in its own session and would not see it
            leftovers = _end_session(proc)
        stdout, stderr = _read(out), _read(err)[-4000:]
    if timed_out:
        return {
            "status": "timeout",
            "error": f"ran past {timeout:.0f}s",
            "log_tail": stderr,
            "leftover_processes_ended": leftovers,
        }
    try:
        result: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError:
        return {
            "status": "error",
            "error": f"exit code {proc.returncode}, no JSON result",
            "log_tail": stderr,
        }
    if result.get("status") == "error" and stderr:
        result["log_tail"] = stderr
    if leftovers:
        result["leftover_processes_ended"] = leftovers
    return result


def _run_vivace(
    bench_names: Sequence[str], config: RunConfig, timeout: float, verbose: bool
) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="vivace-bench-"))
    env = {"VIVACE_HOME": str(home)}
    result: dict[str, Any] = {"status": "error"}
    try:
        result = run_peer_process("vivace", bench_names, config, timeout, verbose, env)
        if result.get("benchmarks"):
            details = vivace_home.describe(_peer_env(env), REPO_ROOT)
            if details:
                result["details"] = details
        return result
    finally:
        if result["status"] == "not installed":
            vivace_home.remove(home, stopped=True)  # nothing ever ran there
        else:
            stopped, leftovers = vivace_home.stop_server(home, _peer_env(env), REPO_ROOT)
            if leftovers:
                result["leftover_processes_ended"] = result.get("leftover_processes_ended", 0) + leftovers
            vivace_home.remove(home, stopped)


def _peer_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # Workers of every peer import the trivial function by module name, as Vivace containers do.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports to the outside
    # Under `uv run`, Ray would start its workers through `uv run` again, in a directory of its own
    # (a new, empty environment); they must run the driver's own interpreter, as every other peer's do.
    env.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    env.update(extra)
    return env


def _end_session(proc: subprocess.Popen[bytes]) -> int:
    """End whatever is left of the peer's session; returns how many processes were left.

    Ray's workers move to process groups of their own but stay in the session, so the session id
    (the peer's pid, thanks to ``start_new_session``) is what finds them.
    """
    proc.poll()
    if not procs.have_proc():  # not Linux: the process group is the best handle there
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return 0
    found = procs.terminate(lambda: procs.session_members(proc.pid), proc.poll)
    proc.wait()
    return len(found - {proc.pid})


def _read(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
