"""Finding (or, as root, installing) the Debian tools the registry tests need."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(why: str) -> None:
    """Skip locally; fail under CI=true, where a missing tool is a set-up bug."""
    if in_ci():
        pytest.fail(f"CI=true but {why}", pytrace=False)
    pytest.skip(why)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"{what} needs root (whiteouts, trusted.* xattrs, overlay mounts)")


def require_tool(command: str, package: str) -> str:
    """The path of ``command``; as root, ``apt-get install package`` when it is missing."""
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin:/usr/bin")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
        if subprocess.run(install, env=env, capture_output=True, check=False, timeout=300).returncode != 0:
            subprocess.run(
                ["apt-get", "update", "-qq"], env=env, capture_output=True, check=False, timeout=300
            )
            subprocess.run(install, env=env, capture_output=True, check=False, timeout=300)
        found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin:/usr/bin")
        if found:
            return found
    unavailable(f"`{command}` is missing (apt-get install {package}, or .ci/install-runtimes.sh)")
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
