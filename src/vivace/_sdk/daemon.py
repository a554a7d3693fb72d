"""The embedded default: start (or reuse) a local control plane + worker under ``VIVACE_HOME``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vivace._version import __version__
from vivace.exception import ServiceError, VersionError

START_TIMEOUT = 60.0


def read_state(home: Path) -> dict[str, object] | None:
    try:
        state = json.loads((home / "daemon.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def healthy(url: str) -> str | None:
    """Return the daemon's version when it answers, else None."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
            return str(json.loads(resp.read())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_daemon(home: Path) -> dict[str, object] | None:
    state = read_state(home)
    if state and _alive(state.get("pid")):
        version = healthy(str(state["url"]))
        if version is not None:
            state["version"] = version
            return state
    return None


def ensure_daemon(home: Path) -> tuple[str, str]:
    """Return (url, "TOKEN_ID:SECRET") of a running local daemon, starting one if needed."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(home / "daemon.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = running_daemon(home)
        if state is None:
            state = _start(home)
        if state.get("version") != __version__:
            raise VersionError(
                f"the local vivace daemon runs {state.get('version')} but this client is {__version__}; "
                "run `vivace server stop` and try again"
            )
    creds = json.loads((home / "credentials.json").read_text())
    return str(state["url"]), f"{creds['token_id']}:{creds['token_secret']}"


def _start(home: Path) -> dict[str, object]:
    (home / "daemon.json").unlink(missing_ok=True)
    log = open(home / "server.log", "ab")  # noqa: SIM115 - handed to the child
    argv = [
        sys.executable,
        "-m",
        "vivace.cli.main",
        "server",
        "--embedded",
        "--home",
        str(home),
        "--port",
        "0",
    ]
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "VIVACE_HOME": str(home)},
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (home / "server.log").read_text(errors="replace")[-2000:]
            raise ServiceError(f"the local vivace daemon failed to start (exit {proc.returncode}):\n{tail}")
        state = running_daemon(home)
        if state is not None and state.get("pid") == proc.pid:
            return state
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    raise ServiceError(
        f"the local vivace daemon did not start within {START_TIMEOUT:g} s; see {home}/server.log"
    )


def stop_daemon(home: Path, timeout: float = 20.0) -> bool:
    state = read_state(home)
    if not state or not _alive(state.get("pid")):
        (home / "daemon.json").unlink(missing_ok=True)
        return False
    pid = int(state["pid"])  # type: ignore[call-overload]
    os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    if _alive(pid):
        os.kill(pid, 9)
    worker = state.get("worker_pid")
    if isinstance(worker, int) and _alive(worker):  # the daemon normally stops its worker itself
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.05)
        if _alive(worker):
            os.kill(worker, 9)
    (home / "daemon.json").unlink(missing_ok=True)
    return True
