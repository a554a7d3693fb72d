"""The images benchmark's steps built by the engines users know: ``docker build`` and ``podman build``.

The base is Vivace's own ``debian_slim("3.11")`` root filesystem imported into each engine (its
storage in a temporary directory), so every builder starts from the same content. The pip step is the
command Vivace's worker runs (``uv pip install --system --compile-bytecode``, resolving against the
package index with uv's cache warm), as a ``RUN`` with uv and the CA bundle the worker would pass
(``SSL_CERT_FILE``) bind-mounted from the build context and uv's cache in a cache mount, on the host's
network. One untimed build fills the caches; then each *pip
layer* build changes a build argument the step reads, so that step alone runs again, and each *cached
rebuild* repeats the last build with every step cached.

Debian bookworm's ``docker.io`` (20.10) builds with BuildKit only through the ``buildx`` plugin, which
bookworm does not package; its legacy builder cannot mount a cache, so it would rebuild the pip layer
with a cold cache. Where ``docker build`` cannot use BuildKit, its rows say so instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import coldstart
from benchmarks.coldstart import Unavailable
from benchmarks.stats import latency_summary

BASE_TAG = "vivace-images:base"
TAG = "vivace-images:built"
DOCKERFILE = """\
FROM {base}
ARG NONCE
RUN --mount=type=bind,source=uv,target=/usr/local/bin/uv --mount=type=bind,source=ca.pem,target=/etc/build-ca.pem \\
    --mount=type=cache,target=/root/.cache/uv \\
    echo "build $NONCE" && SSL_CERT_FILE=/etc/build-ca.pem uv pip install --system --break-system-packages \\
    --compile-bytecode --python python3 {packages}
"""
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
NO_BUILDX = "buildx component is missing"


def context(work: Path, uv: Path, packages: Sequence[str]) -> Path:
    ctx = work / "context"
    ctx.mkdir(parents=True)
    shutil.copy2(uv, ctx / "uv")
    # the CA bundle the worker hands its build steps: SSL_CERT_FILE's, else the host's
    shutil.copy2(os.environ.get("SSL_CERT_FILE") or HOST_CA, ctx / "ca.pem")
    quoted = " ".join(shlex.quote(p) for p in packages)
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=BASE_TAG, packages=quoted))
    return ctx


def docker_build(base_rootfs: Path, ctx: Path, work: Path, n: int) -> dict[str, Any]:
    with coldstart.dockerd(work) as (docker, env):
        env = {**env, "DOCKER_BUILDKIT": "1"}
        coldstart._import(base_rootfs, [docker, "import", "-", BASE_TAG], env)
        argv = [docker, "build", "--network", "host", "--progress", "plain", "-t", TAG]
        try:
            figures = _measure(
                lambda nonce: _build([*argv, "--build-arg", f"NONCE={nonce}", str(ctx)], env), n
            )
        except RuntimeError as err:
            if NO_BUILDX in str(err):
                raise Unavailable(
                    "docker build needs BuildKit (for the cache mount), which this docker CLI runs only "
                    "through the buildx plugin, not installed (Debian bookworm does not package it)"
                ) from None
            raise
        return {"status": "ok", "version": f"{coldstart.docker_version(docker, env)} (BuildKit)", **figures}


def podman_build(base_rootfs: Path, ctx: Path, work: Path, n: int) -> dict[str, Any]:
    with coldstart.podman_store(work) as (base, runtime, preexec):
        coldstart._import(base_rootfs, [*base, "import", "-", BASE_TAG], dict(os.environ))
        argv = [*base, "--runtime", runtime, "build", "--layers", "--network", "host", *coldstart.LIMITS,
                "-t", TAG]  # fmt: skip
        figures = _measure(
            lambda nonce: _build([*argv, "--build-arg", f"NONCE={nonce}", str(ctx)], None, preexec), n
        )
        version = coldstart._version([base[0], "--version"]).split()[-1]
        return {"status": "ok", "version": f"podman {version} (buildah, {runtime})", **figures}


def _measure(build: Callable[[str], float], n: int) -> dict[str, Any]:
    build("warm-up")  # untimed: fills the uv cache mount
    pip = [build(uuid.uuid4().hex) for _ in range(n)]
    last = uuid.uuid4().hex
    build(last)
    rebuild = [build(last) for _ in range(4 * n)]
    return {"pip": latency_summary(pip), "rebuild": latency_summary(rebuild)}


def _build(argv: list[str], env: dict[str, str] | None, preexec: Callable[[], None] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, preexec_fn=preexec)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} build exited {proc.returncode}: {proc.stderr.strip()[-600:]}"
        )
    return elapsed
