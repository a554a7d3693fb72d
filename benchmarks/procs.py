"""Finding and ending the processes a benchmark left behind, always by their own pid (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

GRACE_S = 5.0


def have_proc() -> bool:
    return Path("/proc/self/stat").exists()


def session_members(sid: int) -> set[int]:
    """Live (not zombie) processes in session ``sid``."""
    return {pid for pid, fields in _stats() if int(fields[3]) == sid and fields[0] != "Z"}


def mentioning(text: str) -> set[int]:
    """Live processes other than this one whose command line contains ``text``."""
    found: set[int] = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        pid = int(cmdline.parent.name)
        try:
            if pid != os.getpid() and text.encode() in cmdline.read_bytes():
                found.add(pid)
        except OSError:
            continue
    zombies = {pid for pid, fields in _stats() if fields[0] == "Z"}
    return found - zombies


def wait_gone(find: Callable[[], set[int]], timeout: float) -> set[int]:
    """Poll ``find`` until it returns nothing or ``timeout`` passes; what is still there."""
    deadline = time.monotonic() + timeout
    left = find()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = find()
    return left


def terminate(find: Callable[[], set[int]], on_wait: Callable[[], object] = lambda: None) -> set[int]:
    """SIGTERM what ``find`` returns, SIGKILL what is still there after a grace period.

    Returns the processes there were at the start. ``on_wait`` runs while waiting (to reap a child).
    """
    first = find()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = find()
        if not members:
            break
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and find():
            time.sleep(0.1)
            on_wait()
    return first


def _stats() -> list[tuple[int, list[str]]]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # After the parenthesised command: state, ppid, pgrp, session, ...
            out.append((int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()))
        except (OSError, IndexError, ValueError):
            continue
    return out


def stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM a child, then SIGKILL it if it is still there after ``grace`` seconds; reap it."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
