"""Cold start: zero containers to the first result, Vivace beside the container engines users know.

Every peer starts the same image content — the base root filesystem Vivace's worker builds (its Python,
stdlib as bytecode, the libraries it links) — from a cache that is already warm:

- ``crun run`` of ``python3 -c 'print(1)'`` on an overlay root that is already mounted: the floor;
- ``docker run --rm --network none`` and ``podman run --rm --network none`` of that root imported as an
  image (each engine's data in a temporary directory; dockerd started for the run without touching
  iptables, and stopped after);
- Vivace, the whole path: ``f.remote(1)`` on an app with no container, through the control plane's
  scheduler, the worker, a crun container and the function's result, fully cold (``--warm-pool 0``)
  and with the worker's warm pool (``--warm-pool 2``).

Needs root, crun and (for their rows) docker.io and podman; a missing engine is reported as such.
Each sample is one start; between Vivace samples the app's container is gone and the pool refilled.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import procs
from benchmarks.config import RunConfig
from benchmarks.stats import latency_summary

PRINT_ONE = ["/usr/local/bin/python3", "-c", "print(1)"]
LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]  # root's hard limits here

PEERS: dict[str, str] = {
    "crun": "`crun run` of `python3 -c 'print(1)'`, root already mounted (floor)",
    "docker": "`docker run --rm --network none IMG python3 -c 'print(1)'`",
    "podman": "`podman run --rm --network none IMG python3 -c 'print(1)'`",
    "vivace-cold": "Vivace `f.remote(1)`, zero containers, no warm pool (crun)",
    "vivace-pool": "Vivace `f.remote(1)`, zero containers, warm pool of 2 (crun)",
}


class Unavailable(Exception):
    """The peer cannot run on this machine (not installed, not root)."""


def samples_for(config: RunConfig) -> int:
    return 6 if config.mode == "quick" else 25


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """Figures per peer: a latency summary (ms) of its samples, or a status saying why there are none."""
    n = samples_for(config)
    work = Path(tempfile.mkdtemp(prefix="vivace-coldstart-"))
    results: dict[str, Any] = {}
    cgroups_before = _top_cgroups()
    try:
        rootfs = _base_rootfs(work / "images")
        for name, measure in (
            ("crun", _crun),
            ("docker", _docker),
            ("podman", _podman),
            ("vivace-cold", lambda r, w, k: _vivace(w, k, warm_pool=0)),
            ("vivace-pool", lambda r, w, k: _vivace(w, k, warm_pool=2)),
        ):
            log(f"coldstart: {name} ({n} starts)")
            try:
                version, samples = measure(rootfs, work / name, n)
            except Unavailable as err:
                results[name] = {"status": "not installed", "error": str(err)}
                continue
            except Exception as err:  # one peer failing must not lose the others' figures
                results[name] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
                continue
            results[name] = {"status": "ok", "version": version, **latency_summary(samples)}
            log(f"coldstart: {name} p50 {results[name]['p50_ms']:.1f} ms")
    finally:
        _unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)
        _remove_cgroups(_top_cgroups() - cgroups_before)  # docker's and podman's parents
    return results


# -- the shared image content --------------------------------------------------------------------
def _base_rootfs(images_dir: Path) -> Path:
    from vivace.worker import images

    return images.base_rootfs(images_dir) / "rootfs"


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Unavailable(f"{what} needs root")


def _which(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise Unavailable(f"{binary} is not installed")
    return path


def _version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
    return out.splitlines()[0] if out else "unknown"


def _time_start(argv: list[str], **kw: Any) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or proc.stdout.strip() != "1":
        raise RuntimeError(
            f"{argv[0]} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-400:]}"
        )
    return elapsed


# -- crun: the floor -----------------------------------------------------------------------------
def _crun(rootfs: Path, work: Path, n: int, argv: list[str] = PRINT_ONE) -> tuple[str, list[float]]:
    _need_root("crun")
    binary = _which("crun")
    from vivace.worker import images
    from vivace.worker.cgroups import ContainerCgroup, detect
    from vivace.worker.runtimes.base import ContainerSpec, RuntimeContext
    from vivace.worker.runtimes.oci import OciRuntime, mount_overlay, oci_config

    key = "bench" + uuid.uuid4().hex[:6]
    runtime = OciRuntime("crun", binary, RuntimeContext(work, key))
    bundle = work / "bundle"
    for d in (bundle / "rootfs", work / "upper", work / "work", work / "sock"):
        d.mkdir(parents=True)
    mount_overlay([rootfs], work / "upper", work / "work", bundle / "rootfs")
    spec = ContainerSpec(container_id=key, workdir=work, socket_path=work / "sock" / "s", source_dir=None)
    config = oci_config(
        spec,
        cgroups_path=f"/vivace/{key}/ctr",
        runtime_bundle=images.runtime_bundle(work / "images"),
        netns=None,
        rlimit_nofile=1024,
    )
    config["process"]["args"] = argv
    (bundle / "config.json").write_text(json.dumps(config))
    runtime.state_root.mkdir(parents=True, exist_ok=True)
    cgroup = ContainerCgroup(detect(), f"vivace/{key}")
    try:
        samples = []
        for i in range(n + 1):  # the first start is untimed
            argv = [binary, *runtime.global_args, "run", "--bundle", str(bundle), f"{key}-{i}"]
            elapsed = _time_start(argv, preexec_fn=runtime._preexec)
            if i:
                samples.append(elapsed)
        return _version([binary, "--version"]), samples
    finally:
        cgroup.remove()
        shutil.rmtree(runtime.state_root, ignore_errors=True)
        with contextlib.suppress(OSError):
            runtime.state_root.parent.rmdir()


# -- docker and podman ---------------------------------------------------------------------------
def _docker(
    rootfs: Path, work: Path, n: int, argv: list[str] = PRINT_ONE, tag: str = "vivace-coldstart:base"
) -> tuple[str, list[float]]:
    with dockerd(work) as (docker, env):
        _import(rootfs, [docker, "import", "-", tag], env)
        run = [docker, "run", "--rm", "--network", "none", tag, *argv]
        samples = [_time_start(run, env=env) for _ in range(n + 1)][1:]
        return f"{docker_version(docker, env)} (runc)", samples


@contextlib.contextmanager
def dockerd(work: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A Docker engine of its own for the block: data in ``work``, no iptables, no bridge; yields the
    ``docker`` binary and the environment that points it at this engine. Stopped and unmounted after."""
    _need_root("dockerd")
    docker, dockerd_bin = _which("docker"), _which("dockerd")
    work.mkdir(parents=True)
    sock = work / "docker.sock"
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    log = (work / "dockerd.log").open("wb")
    daemon = subprocess.Popen(
        [dockerd_bin, "--iptables=false", "--ip6tables=false", "--bridge=none",
         "--data-root", str(work / "data"), "--exec-root", str(work / "exec"),
         "--pidfile", str(work / "docker.pid"), "-H", f"unix://{sock}"],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        _wait(
            lambda: subprocess.run([docker, "info"], env=env, capture_output=True).returncode == 0, "dockerd"
        )
        yield docker, env
    finally:
        procs.stop(daemon)
        log.close()
        _unmount_all(work)


def docker_version(docker: str, env: dict[str, str]) -> str:
    out = subprocess.run([docker, "version", "--format", "{{.Server.Version}}"], env=env,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    return out or "unknown"


def _podman(
    rootfs: Path, work: Path, n: int, argv: list[str] = PRINT_ONE, tag: str = "vivace-coldstart:base"
) -> tuple[str, list[float]]:
    with podman_store(work) as (base, runtime, preexec):
        _import(rootfs, [*base, "import", "-", tag], dict(os.environ))
        run = [*base, "--runtime", runtime, "run", "--rm", "--network", "none", *LIMITS, tag, *argv]
        samples = [_time_start(run, preexec_fn=preexec) for _ in range(n + 1)][1:]
        return f"{_version([base[0], '--version']).split()[-1]} ({runtime})", samples


@contextlib.contextmanager
def podman_store(work: Path) -> Iterator[tuple[list[str], str, Callable[[], None] | None]]:
    """Rootful podman with its storage in ``work`` for the block: yields the argv prefix, the OCI
    runtime it should use and the ``preexec_fn`` that runtime needs here; the storage is reset after."""
    _need_root("podman (rootful)")
    podman = _which("podman")
    work.mkdir(parents=True)
    base = [podman, "--root", str(work / "root"), "--runroot", str(work / "run"), "--storage-driver", "overlay",
            "--cgroup-manager", "cgroupfs", "--events-backend", "none"]  # fmt: skip
    # its best case here: crun, which (like Vivace's crun) needs the hybrid cgroup2 mount out of sight
    preexec, runtime = _hybrid_preexec(), "crun"
    if shutil.which("crun") is None:
        preexec, runtime = None, "runc"
    try:
        yield base, runtime, preexec
    finally:
        with contextlib.suppress(Exception):
            subprocess.run([*base, "system", "reset", "--force"], capture_output=True, timeout=60)
        _unmount_all(work)


def _hybrid_preexec() -> Callable[[], None] | None:
    from vivace.worker.cgroups import detect
    from vivace.worker.runtimes.base import RuntimeContext
    from vivace.worker.runtimes.oci import OciRuntime

    host = detect()
    if host.mode != "hybrid":
        return None
    rt = OciRuntime("crun", "crun", RuntimeContext(Path("/nonexistent"), "x"), host)
    return rt._preexec


def _import(rootfs: Path, argv: list[str], env: dict[str, str]) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(argv, stdin=tar.stdout, env=env, capture_output=True, check=True)
    tar.wait()


# -- Vivace --------------------------------------------------------------------------------------
def _vivace(work: Path, n: int, *, warm_pool: int) -> tuple[str, list[float]]:
    _need_root("Vivace's crun runtime")
    _which("crun")
    import vivace
    from benchmarks.cluster import local_cluster, timed_remote

    work.mkdir(parents=True)
    with local_cluster(work, warm_pool=warm_pool):
        sys.modules.pop("benchmarks.coldstart_app", None)
        app_module: Any = importlib.import_module("benchmarks.coldstart_app")
        samples = []
        for i in range(n + 1):  # the first start also fetches the source: untimed
            _wait(
                lambda: _settled(work / "worker", work / "worker.log", warm_pool),
                "the previous container to go and the pool to refill",
            )
            elapsed = timed_remote(app_module.app, app_module.trivial)
            if i:
                samples.append(elapsed)
    return str(getattr(vivace, "__version__", "unknown")), samples


def _settled(workdir: Path, log: Path, warm_pool: int) -> bool:
    """No function container of this worker is left, and its warm pool is full (from its log)."""
    if any((workdir / "containers").glob("ta-*")):
        return False
    text = log.read_text(errors="replace") if log.exists() else ""
    ready = set(re.findall(r"warm \w+ container (warm-\w+) ready", text))
    taken = set(re.findall(r"started from warm \w+ container (warm-\w+)", text))
    return len(ready - taken) >= warm_pool


# -- helpers ---------------------------------------------------------------------------------------
def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _top_cgroups() -> set[Path]:
    from vivace.worker.cgroups import detect

    return {d for root in detect().roots() if root.is_dir() for d in root.iterdir() if d.is_dir()}


def _remove_cgroups(dirs: set[Path]) -> None:
    for d in dirs:
        for dirpath, _subdirs, _files in sorted(os.walk(d), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def _unmount_all(prefix: Path) -> None:
    from vivace.worker.runtimes.oci import mounted_under, unmount

    for m in mounted_under(prefix):
        with contextlib.suppress(OSError):
            unmount(m)
