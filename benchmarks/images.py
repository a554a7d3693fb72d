"""Images: a heavy image's cold start beside the container engines, cached rebuilds, and a pip layer
beside plain ``uv pip install --offline``.

One image, ``debian_slim("3.11").pip_install("numpy==2.*", "pandas==2.*")`` (``images_app.py``), built
once by a real worker (untimed), then:

- **cold start**: zero containers to the first result of a function that imports numpy and pandas;
  Vivace fully cold (``--warm-pool 0``) and pool-assisted (``--warm-pool 1``: after an image's first
  start its worker keeps a warm container on the image's root). Beside it, the same root filesystem
  (the image's layers merged) imported into docker and podman, and ``crun run`` on it already mounted
  (the floor), each running ``python3 -c 'import numpy, pandas; print(1)'``;
- **cached rebuild**: ``image.build()`` of the built image (the client hashes the chain, the control
  plane finds every layer);
- **warm pip layer**: the pip step built again (``force_build``) with the worker's uv cache warm: the
  step as the worker timed it (container, uv, bytecode, packing and storing the layer) and the whole
  ``build()``, beside ``uv pip install --offline --compile-bytecode --link-mode copy`` of the same
  requirements into an empty directory from the same cache.

Needs root, crun, debootstrap and uv, and the package index once (the first build); docker and podman
for their rows. A missing engine is reported as such.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import coldstart
from benchmarks.cluster import local_cluster, timed_remote
from benchmarks.coldstart import Unavailable
from benchmarks.config import RunConfig
from benchmarks.stats import latency_summary

IMPORT_ONE = ["/usr/bin/python3", "-c", "import numpy, pandas; print(1)"]
TAG = "vivace-images:heavy"

COLD_PEERS: dict[str, str] = {
    "process": "a fresh `python3 -c 'import numpy, pandas'` on the host: no container (the same packages)",
    "crun": "`crun run` of `python3 -c 'import numpy, pandas'`, root already mounted (floor)",
    "docker": "`docker run --rm --network none IMG python3 -c 'import numpy, pandas'`",
    "podman": "`podman run --rm --network none IMG python3 -c 'import numpy, pandas'`",
    "vivace-cold": "Vivace `f.remote(1)`, function importing numpy and pandas, zero containers, no warm pool",
    "vivace-pool": "Vivace `f.remote(1)`, same, zero containers, a warm container on the image's root",
}


def samples_for(config: RunConfig) -> int:
    return 3 if config.mode == "quick" else 15


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """``{"coldstart": {peer: summary}, "rebuild": summary, "pip": {...}}``; a failing part says why."""
    n = samples_for(config)
    work = Path(tempfile.mkdtemp(prefix="vivace-images-"))
    out: dict[str, Any] = {
        "coldstart": {},
        "packages": list(_app().PACKAGES),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    cgroups_before = coldstart._top_cgroups()
    try:
        coldstart._need_root("building images")
        for tool in ("crun", "debootstrap"):
            coldstart._which(tool)
        rootfs = work / "rootfs"
        layers = 1 if config.mode == "quick" else 5
        # one home for both clusters, one after the other: the second finds the image built
        with _cluster(work / "cluster", warm_pool=0) as (cluster, app):
            log("images: building the numpy+pandas image (untimed)")
            t0 = time.perf_counter()
            app.image.build()
            out["first_build_s"] = time.perf_counter() - t0
            log(f"images: built in {out['first_build_s']:.1f} s; cold starts ({n})")
            out["coldstart"]["vivace-cold"] = _starts(cluster, app, n, pool=False)
            log("images: cached rebuilds")
            out["rebuild"] = _rebuilds(app, 4 * n)
            log("images: warm pip layer")
            out["pip"] = _pip_layers(cluster, app, layers)
            _merge_root(cluster, app.image, rootfs)
            base_rootfs = work / "base-rootfs"
            _merge_root(cluster, app.base, base_rootfs)
            uv_cache = cluster.home / "worker" / "images" / "uv-cache"
            out["pip"]["uv"] = _uv_offline(uv_cache, work / "uv", layers)
            log(f"images: fresh processes ({n})")
            out["coldstart"]["process"] = _peer(lambda: _fresh_process(uv_cache, work / "site", n))
        with _cluster(work / "cluster", warm_pool=1) as (cluster, app):
            log(f"images: pool-assisted starts ({n})")
            app.image.build()
            out["coldstart"]["vivace-pool"] = _starts(cluster, app, n, pool=True)
        for name, measure in (("crun", coldstart._crun), ("docker", coldstart._docker),
                              ("podman", coldstart._podman)):  # fmt: skip
            log(f"images: {name} ({n} starts)")
            kw: dict[str, Any] = {} if name == "crun" else {"tag": TAG}
            out["coldstart"][name] = _peer(
                lambda m=measure, k=kw, w=work / name: m(rootfs, w, n, IMPORT_ONE, **k)
            )
        log(f"images: docker build and podman build ({layers} pip layers each)")
        out["engine_builds"] = _engine_builds(base_rootfs, work / "builds", layers)
    except Unavailable as err:
        out["status"] = "not installed"
        out["error"] = str(err)
    except Exception as err:  # the figures so far are kept
        out["status"] = "error"
        out["error"] = f"{type(err).__name__}: {err}"
    finally:
        coldstart._unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)
        coldstart._remove_cgroups(coldstart._top_cgroups() - cgroups_before)
    out.setdefault("status", "ok")
    return out


def _peer(measure: Callable[[], tuple[str, list[float]]]) -> dict[str, Any]:
    try:
        version, samples = measure()
    except Unavailable as err:
        return {"status": "not installed", "error": str(err)}
    except Exception as err:
        return {"status": "error", "error": f"{type(err).__name__}: {err}"}
    return {"status": "ok", "version": version, **latency_summary(samples)}


def _app() -> Any:
    sys.modules.pop("benchmarks.images_app", None)
    return importlib.import_module("benchmarks.images_app")


@contextlib.contextmanager
def _cluster(home: Path, *, warm_pool: int) -> Iterator[tuple[Any, Any]]:
    from vivace.worker.build import find_uv

    uv = find_uv()
    if uv is None:
        raise Unavailable("uv is not installed (the worker installs Python packages with it)")
    env = {"VIVACE_UV": str(uv)}
    if os.environ.get("VIVACE_BASE_CACHE"):
        env["VIVACE_BASE_CACHE"] = os.environ["VIVACE_BASE_CACHE"]
    with local_cluster(home, warm_pool=warm_pool, worker_env=env) as cluster:
        yield cluster, _app()


def _starts(cluster: Any, app: Any, n: int, *, pool: bool) -> dict[str, Any]:
    """Zero containers to the first result, ``n`` times after one untimed start (which fetches the
    function's source and, pool-assisted, makes the worker keep a warm container on the image)."""
    samples = []
    image_id = app.image.object_id
    for i in range(n + 1):
        wanted = image_id if pool and i else None
        coldstart._wait(lambda w=wanted: _settled(cluster, w), "the worker to settle", 120)
        elapsed = timed_remote(app.app, app.heavy)
        if i:
            samples.append(elapsed)
    import vivace

    return {"status": "ok", "version": vivace.__version__, **latency_summary(samples)}


def _settled(cluster: Any, image_id: str | None) -> bool:
    """No function container is left; with ``image_id``, a warm container on that image is ready."""
    if any((cluster.home / "worker" / "containers").glob("ta-*")):
        return False
    if image_id is None:
        return True
    text = (cluster.home / "worker.log").read_text(errors="replace")
    ready = set(re.findall(rf"warm \w+ container (warm-\w+) ready on image {image_id}", text))
    taken = set(re.findall(r"started from warm \w+ container (warm-\w+)", text))
    return bool(ready - taken)


def _rebuilds(app: Any, n: int) -> dict[str, Any]:
    samples = []
    for _ in range(n + 1):
        image = _app().image  # a fresh object: nothing memoised on the client
        start = time.perf_counter()
        image.build()
        samples.append(time.perf_counter() - start)
    return {"status": "ok", **latency_summary(samples[1:])}


def _pip_layers(cluster: Any, app: Any, n: int) -> dict[str, Any]:
    import vivace

    step_s, build_s = [], []
    for _ in range(n):
        image = vivace.Image.debian_slim("3.11").pip_install(*app.PACKAGES, force_build=True)
        start = time.perf_counter()
        image.build()
        build_s.append(time.perf_counter() - start)
        lines = cluster.plane.store.write_sync(
            lambda tx, i=image.object_id: [
                r[0] for r in tx.fetchall("SELECT line FROM build_logs WHERE image_id = ? ORDER BY id", (i,))
            ]
        )
        done = [float(m[1]) for line in lines if (m := re.search(r"pip_install: done in ([0-9.]+) s", line))]
        if len(done) != 1:
            raise RuntimeError(f"the pip step was not built once: {lines[-5:]}")
        step_s.append(done[0])
    return {"step": latency_summary(step_s), "build": latency_summary(build_s)}


def _uv_offline(cache: Path, work: Path, n: int) -> dict[str, Any]:
    from vivace.worker.build import find_uv

    uv = find_uv()
    assert uv is not None
    app = _app()
    samples = []
    for i in range(n):
        target = work / f"t{i}"
        start = time.perf_counter()
        proc = subprocess.run(
            [str(uv), "pip", "install", "--offline", "--compile-bytecode", "--link-mode", "copy",
             "--cache-dir", str(cache), "--python", sys.executable, "--target", str(target),
             *app.PACKAGES],
            capture_output=True, text=True,
        )  # fmt: skip
        samples.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"uv pip install --offline failed: {proc.stderr.strip()[-500:]}")
        shutil.rmtree(target, ignore_errors=True)
    version = subprocess.run([str(uv), "--version"], capture_output=True, text=True).stdout.strip()
    return {"status": "ok", "version": version, **latency_summary(samples)}


def _fresh_process(cache: Path, site: Path, n: int) -> tuple[str, list[float]]:
    """The imports alone: this machine's Python (the image's minor) with the same packages, no container."""
    from vivace.worker.build import find_uv

    uv = find_uv()
    assert uv is not None
    subprocess.run(
        [str(uv), "pip", "install", "--offline", "--compile-bytecode", "--cache-dir", str(cache),
         "--python", sys.executable, "--target", str(site), *_app().PACKAGES],
        capture_output=True, check=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site)}
    argv = [sys.executable, "-c", "import numpy, pandas; print(1)"]
    samples = [coldstart._time_start(argv, env=env) for _ in range(n + 1)][1:]
    return f"Python {sys.version.split()[0]}", samples


def _engine_builds(base_rootfs: Path, work: Path, n: int) -> dict[str, Any]:
    from benchmarks import images_build
    from vivace.worker.build import find_uv

    uv = find_uv()
    assert uv is not None
    ctx = images_build.context(work, uv, _app().PACKAGES)
    out = {}
    for name, build in (("docker", images_build.docker_build), ("podman", images_build.podman_build)):
        try:
            out[name] = build(base_rootfs, ctx, work / name, n)
        except Unavailable as err:
            out[name] = {"status": "not installed", "error": str(err)}
        except Exception as err:
            out[name] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
    return out


def _merge_root(cluster: Any, image: Any, dest: Path) -> None:
    """An image's layers (built on the cluster's worker) merged into one directory: what docker and
    podman import."""
    from vivace.protocol import images as proto
    from vivace.worker.builder import squash

    layers = cluster.home / "worker" / "images" / "layers"
    dirs = [layers / key for key in proto.layer_keys(image.steps())]
    dest.mkdir()
    squash(dirs, dest)
