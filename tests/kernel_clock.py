"""A process's life as the kernel records it, to check metering against (ADR 0015): its start from
``/proc/PID/stat`` and its exit as seen by polling, both on this machine's wall clock."""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_start(pid: int) -> float:
    """When the kernel started ``pid`` (epoch seconds, to its clock tick: 10 ms)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    start_ticks = int(stat.rpartition(")")[2].split()[19])  # field 22: starttime, ticks since boot
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    boot = time.time() - uptime
    return boot + start_ticks / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_exit(pid: int, timeout: float) -> float:
    """Poll until ``pid`` exits; return when it was first seen gone (epoch seconds, 5 ms polls)."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not exit within {timeout:g} s")
        time.sleep(0.005)
    return time.time()
