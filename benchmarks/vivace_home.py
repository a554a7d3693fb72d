"""The Vivace daemon a run starts under its temporary ``VIVACE_HOME``: describe it, stop it, remove it.

All of it is best effort: the benchmark must not fail because the CLI lacks a command or a field.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks import procs

_CLI = [sys.executable, "-m", "vivace.cli.main"]
_KEYS = ("runtime", "store", "blobs", "version")


def describe(env: Mapping[str, str], cwd: Path) -> dict[str, Any]:
    """Which container runtime and store the daemon used, if ``vivace server status`` says so."""
    for args in (["server", "status", "--json"], ["server", "status"]):
        out = _cli(args, env, cwd)
        if out is None:
            continue
        found = _from_json(out) or _from_text(out)
        if found:
            return found
    return {}


def stop_server(home: Path, env: Mapping[str, str], cwd: Path) -> tuple[bool, int]:
    """``vivace server stop`` for this home, then end what outlived it.

    Returns whether the CLI reported success, and how many processes were left to end: those in the
    daemon's session (it is a session leader) or with the home in their command line.
    """
    daemon_pid = _daemon_pid(home)
    stopped = _cli(["server", "stop"], env, cwd) is not None
    if not procs.have_proc():
        return stopped, 0

    def find() -> set[int]:
        found = procs.mentioning(str(home))
        if daemon_pid is not None:
            found |= procs.session_members(daemon_pid)
        return found

    if not procs.wait_gone(find, timeout=5.0):
        return stopped, 0
    return stopped, len(procs.terminate(find))


def _daemon_pid(home: Path) -> int | None:
    try:
        pid = json.loads((home / "daemon.json").read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


def remove(home: Path, stopped: bool) -> None:
    """Delete the temporary home, unless the daemon may still run or something is mounted below it."""
    if home.is_dir() and not any(home.iterdir()):
        home.rmdir()  # nothing ever ran there
        return
    if not stopped:
        print(f"[bench] vivace server stop failed; leaving {home}", file=sys.stderr)
        return
    if _has_mounts_below(home):
        print(f"[bench] mounts remain under {home}; leaving it", file=sys.stderr)
        return
    shutil.rmtree(home, ignore_errors=True)


def _cli(args: list[str], env: Mapping[str, str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(
            [*_CLI, *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _from_json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    found: dict[str, Any] = {}
    _collect(data, found)
    return found


def _collect(node: Any, found: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _KEYS and isinstance(value, str | int | float) and key not in found:
                found[key] = value
            else:
                _collect(value, found)
    elif isinstance(node, list):
        for item in node:
            _collect(item, found)


def _from_text(text: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in text.splitlines():
        match = re.match(r"\s*(runtimes?|store|blobs)\s*[:=]\s*(\S.*?)\s*$", line, re.IGNORECASE)
        if match:
            found.setdefault(match.group(1).lower(), match.group(2))
    return found


def _has_mounts_below(path: Path) -> bool:
    """Never rmtree across a mount point: a container's bind mount could be the user's own files."""
    root = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return True
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            mount_point = fields[4].replace("\\040", " ")
            if mount_point == root or mount_point.startswith(root + "/"):
                return True
    return False
