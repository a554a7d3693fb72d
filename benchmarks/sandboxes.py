"""Sandboxes: create to the first output of an exec, sequentially and as a burst, under runsc and crun,
beside the container engines' own ``run`` of the same image content.

- **Vivace**: ``Sandbox.create(app=...)`` then ``sb.exec("python3", "-c", "print(1)")`` until its
  stdout's first line arrives: the whole path (control plane, scheduler, worker, the runtime's ``run``
  and ``exec``, streams relayed back). Sequential: one sandbox at a time (each terminated, untimed, before
  the next), with the worker's warm pool of 2 (refilled between samples) and cold (no pool). Burst, cold:
  all created at once from as many threads; each sample is one sandbox's create to first output;
  creates per second is the burst's size over the time until the last first output. The control plane
  runs in the benchmark's process, as in the other sections.
- **Peers**: ``runsc run`` (gVisor, ptrace platform, no network) of ``python3 -c 'print(1)'`` on an
  overlay root already mounted, and ``docker run --rm --network none`` / ``podman run --rm --network
  none`` of that root imported as an image: a start and a command's output, with no control plane.

Published anchors (not measured here; network included): Daytona 187 ms, E2B 492 ms, Modal 1.73 s
median create-to-first-output (ComputeSDK, May 2026).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from benchmarks import coldstart
from benchmarks.config import RunConfig
from benchmarks.markdown import row
from benchmarks.stats import latency_summary

PRINT_ONE = coldstart.PRINT_ONE
ROWS = {
    "vivace-runsc-warm": "Vivace sandbox (runsc), sequential, warm pool of 2",
    "vivace-crun-warm": "Vivace sandbox (crun), sequential, warm pool of 2",
    "vivace-runsc-seq": "Vivace sandbox (runsc), sequential, cold",
    "vivace-crun-seq": "Vivace sandbox (crun), sequential, cold",
    "vivace-runsc-burst": "Vivace sandbox (runsc), burst, cold",
    "vivace-crun-burst": "Vivace sandbox (crun), burst, cold",
    "vivace-runsc-pool": "Vivace sandbox (runsc), burst, as many pre-created (`--sandbox-pool`)",
    "vivace-crun-pool": "Vivace sandbox (crun), burst, as many pre-created (`--sandbox-pool`)",
    "runsc-exec-floor": "burst of `runsc exec` into one running container (no control plane): the floor",
    "crun-exec-floor": "burst of `crun exec` into one running container (no control plane): the floor",
    "runsc": "`runsc run` (ptrace, no network), root already mounted",
    "docker": "`docker run --rm --network none IMG python3 -c 'print(1)'`",
    "podman": "`podman run --rm --network none IMG python3 -c 'print(1)'`",
}
ANCHORS = (("Daytona", 187), ("E2B", 492), ("Modal", 1730))


def sizes_for(config: RunConfig) -> tuple[int, int]:
    """(sequential samples, burst size)."""
    return (8, 20) if config.mode == "quick" else (40, 100)


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    n, burst = sizes_for(config)
    out: dict[str, Any] = {"samples": n, "burst": burst, "rows": {},
                           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="vivace-sandboxes-"))
    cgroups_before = coldstart._top_cgroups()
    rows = out["rows"]
    try:
        rootfs = coldstart._base_rootfs(work / "images")
        peers: list[tuple[str, Callable[[], tuple[str, list[float]]]]] = [
            ("runsc", lambda: _runsc_run(rootfs, work / "runsc", n)),
            ("docker", lambda: coldstart._docker(rootfs, work / "docker", n)),
            ("podman", lambda: coldstart._podman(rootfs, work / "podman", n)),
        ]
        for name, measure in peers:
            log(f"sandboxes: {name} ({n} starts)")
            rows[name] = _attempt(measure)
        for rt in ("runsc", "crun"):
            log(f"sandboxes: Vivace {rt}: {n} sequential, then a burst of {burst}")
            try:
                seq, bur = _vivace(work / f"vivace-{rt}", rt, n, burst)
            except coldstart.Unavailable as err:
                rows[f"vivace-{rt}-seq"] = rows[f"vivace-{rt}-burst"] = {
                    "status": "not installed",
                    "error": str(err),
                }
                continue
            except Exception as err:
                failed = {"status": "error", "error": f"{type(err).__name__}: {err}"}
                rows[f"vivace-{rt}-seq"] = rows[f"vivace-{rt}-burst"] = failed
                continue
            rows[f"vivace-{rt}-seq"] = seq
            rows[f"vivace-{rt}-burst"] = bur
            log(f"sandboxes: Vivace {rt}: {n} sequential with the worker's warm pool")
            rows[f"vivace-{rt}-warm"] = _attempt(
                lambda rt=rt: _vivace_warm(work / f"vivace-{rt}-warm", rt, n)
            )
            log(f"sandboxes: Vivace {rt}: a burst of {burst} with as many pre-created")
            try:
                rows[f"vivace-{rt}-pool"] = _vivace_pool(work / f"vivace-{rt}-pool", rt, burst)
            except Exception as err:
                rows[f"vivace-{rt}-pool"] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
            log(f"sandboxes: {rt}: a burst of {burst} execs with no control plane")
            rows[f"{rt}-exec-floor"] = _attempt(
                lambda rt=rt: _exec_floor(rootfs, work / f"{rt}-floor", rt, burst)
            )
    finally:
        coldstart._unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)
        coldstart._remove_cgroups(coldstart._top_cgroups() - cgroups_before)
    return out


def _attempt(measure: Callable[[], tuple[str, list[float]]]) -> dict[str, Any]:
    try:
        version, samples = measure()
    except coldstart.Unavailable as err:
        return {"status": "not installed", "error": str(err)}
    except Exception as err:  # one peer failing must not lose the others' figures
        return {"status": "error", "error": f"{type(err).__name__}: {err}"}
    return {"status": "ok", "version": version, **latency_summary(samples)}


def _vivace(work: Path, runtime: str, n: int, burst: int) -> tuple[dict[str, Any], dict[str, Any]]:
    coldstart._need_root(f"Vivace's {runtime} runtime")
    coldstart._which(runtime)
    import vivace
    from benchmarks.cluster import local_cluster

    work.mkdir(parents=True)
    # room for the whole burst: each sandbox asks for 0.01 cpu and 64 MiB; cold: no warm pool
    with local_cluster(work, warm_pool=0, runtimes=[runtime], worker_cpu=16.0, worker_memory=32768):
        app = vivace.App.lookup(f"bench-sandboxes-{runtime}", create_if_missing=True)
        _first_output(app)  # untimed: the worker's first start builds its base root and runtime bundle
        seq = []
        for _ in range(n):
            seq.append(_first_output(app))
        burst_row = _burst(app, burst)
    version = f"{vivace.__version__} ({runtime})"
    return {"status": "ok", "version": version, **latency_summary(seq)}, {**burst_row, "version": version}


def _burst(app: Any, burst: int) -> dict[str, Any]:
    """``burst`` sandboxes created at once from as many threads, each to its first output."""
    samples: list[float] = [0.0] * burst
    errors: list[str] = []
    began = time.perf_counter()

    def one(i: int) -> None:
        try:
            samples[i] = _first_output(app)
        except Exception as err:  # reported in the row
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} of the burst's {burst} sandboxes failed; first: {errors[0]}")
    return {"status": "ok", **latency_summary(samples), "creates_per_s": burst / wall, "wall_s": wall}


def _vivace_pool(work: Path, runtime: str, burst: int) -> dict[str, Any]:
    """A burst against a worker with ``--sandbox-pool`` of the burst's size, once the pool is full."""
    coldstart._need_root(f"Vivace's {runtime} runtime")
    coldstart._which(runtime)
    import vivace
    from benchmarks.cluster import local_cluster

    work.mkdir(parents=True)
    with local_cluster(work, warm_pool=0, sandbox_pool=burst, runtimes=[runtime], worker_cpu=16.0,
                       worker_memory=32768) as cluster:  # fmt: skip
        app = vivace.App.lookup(f"bench-sandboxes-pool-{runtime}", create_if_missing=True)
        _first_output(app)  # untimed (it may take a warm one, which is replaced)
        log_file = Path(cluster.home) / "worker.log"
        deadline = time.monotonic() + 600
        while _pool_ready(log_file.read_text(errors="replace")) < burst:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker's pool of {burst} did not fill in 10 minutes")
            time.sleep(0.5)
        time.sleep(2)  # the last starts settle
        row = _burst(app, burst)
    return {**row, "version": f"{vivace.__version__} ({runtime}, --sandbox-pool {burst})"}


def _vivace_warm(work: Path, runtime: str, n: int) -> tuple[str, list[float]]:
    """Sequential creates with a warm pool of 2 (the worker's default), each after the pool refilled."""
    coldstart._need_root(f"Vivace's {runtime} runtime")
    coldstart._which(runtime)
    import vivace
    from benchmarks.cluster import local_cluster

    work.mkdir(parents=True)
    with local_cluster(work, warm_pool=2, runtimes=[runtime]):
        app = vivace.App.lookup(f"bench-sandboxes-warm-{runtime}", create_if_missing=True)
        _first_output(app)
        samples = []
        for _ in range(n):
            time.sleep(1.5)  # the replacement warm sandbox starts 0.5 s after a hand-over
            samples.append(_first_output(app))
    return f"{vivace.__version__} ({runtime}, warm)", samples


def _pool_ready(worker_log: str) -> int:
    """Warm sandboxes ready and not taken, from the worker's log."""
    return worker_log.count(" ready in ") - worker_log.count(" started from warm ")


def _first_output(app: Any) -> float:
    import vivace

    start = time.perf_counter()
    sb = vivace.Sandbox.create(app=app, cpu=0.01, memory=64)
    try:
        proc = sb.exec(*PRINT_ONE)
        line = next(iter(proc.stdout))
        elapsed = time.perf_counter() - start
        if line != "1\n":
            raise RuntimeError(f"the sandbox printed {line!r}")
        return elapsed
    finally:
        with contextlib.suppress(Exception):
            sb.terminate()


@contextlib.contextmanager
def _bundle(rootfs: Path, work: Path, name: str, args: list[str]) -> Iterator[tuple[str, Any, Path, str]]:
    """A bundle of ``rootfs`` (an overlay on it) whose process is ``args``, as the worker writes it, with
    no network; yields (the runtime's binary, its ``OciRuntime``, the bundle, a name prefix). Unmounted
    and removed after."""
    coldstart._need_root(name)
    binary = coldstart._which(name)
    from vivace.worker import images
    from vivace.worker.cgroups import ContainerCgroup, detect
    from vivace.worker.runtimes.base import ContainerSpec, RuntimeContext
    from vivace.worker.runtimes.oci import OciRuntime, mount_overlay, oci_config

    key = "bench" + uuid.uuid4().hex[:6]
    runtime = OciRuntime(name, binary, RuntimeContext(work, key))
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
    config["process"]["args"] = args
    (bundle / "config.json").write_text(json.dumps(config))
    runtime.state_root.mkdir(parents=True, exist_ok=True)
    cgroup = ContainerCgroup(detect(), f"vivace/{key}")
    try:
        yield binary, runtime, bundle, key
    finally:
        cgroup.remove()
        shutil.rmtree(runtime.state_root, ignore_errors=True)
        with contextlib.suppress(OSError):
            runtime.state_root.parent.rmdir()


def _runsc_run(rootfs: Path, work: Path, n: int) -> tuple[str, list[float]]:
    with _bundle(rootfs, work, "runsc", PRINT_ONE) as (binary, runtime, bundle, key):
        samples = []
        for i in range(n + 1):  # the first start is untimed
            argv = [
                binary,
                *runtime.global_args,
                "--network=none",
                "run",
                "--bundle",
                str(bundle),
                f"{key}-{i}",
            ]
            elapsed = coldstart._time_start(argv, preexec_fn=runtime._preexec)
            if i:
                samples.append(elapsed)
        return coldstart._version([binary, "--version"]), samples


def _exec_floor(rootfs: Path, work: Path, name: str, burst: int) -> tuple[str, list[float]]:
    """``burst`` execs of the command started at once in one running container, with no control plane:
    what the machine's cores allow a burst of sandboxes at best (each sample: start to first output)."""
    idle = ["python3", "-I", "-S", "-c", "import time; time.sleep(600)"]
    with _bundle(rootfs, work, name, idle) as (binary, runtime, bundle, key):
        net = ["--network=none"] if name == "runsc" else []
        run = [binary, *runtime.global_args, *net, "run", "--detach", "--bundle", str(bundle), key]
        with (work / "run.log").open("w+") as err:  # not a pipe: the detached container keeps its stdio
            started = subprocess.run(run, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                     preexec_fn=runtime._preexec)  # fmt: skip
            if started.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"{name} run: {err.read().strip()[-300:]}")
        try:
            process = json.loads((bundle / "config.json").read_text())["process"]
            (work / "exec.json").write_text(json.dumps({**process, "args": PRINT_ONE}))
            exec_argv = [binary, *runtime.global_args, "exec", "--process", str(work / "exec.json"), key]
            coldstart._time_start(exec_argv, preexec_fn=runtime._preexec)  # untimed: a first exec
            samples = [0.0] * burst
            began = time.perf_counter()

            def one(i: int) -> None:
                proc = subprocess.Popen(exec_argv, stdout=subprocess.PIPE, preexec_fn=runtime._preexec)
                assert proc.stdout is not None
                line = proc.stdout.readline()
                samples[i] = time.perf_counter() - began
                proc.communicate()
                if line != b"1\n" or proc.returncode != 0:
                    samples[i] = float("nan")

            threads = [threading.Thread(target=one, args=(i,)) for i in range(burst)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if any(x != x for x in samples):
                raise RuntimeError(f"some of {burst} {name} execs failed")
            return coldstart._version([binary, "--version"]), samples
        finally:
            subprocess.run([binary, *runtime.global_args, "delete", "--force", key],
                           capture_output=True, preexec_fn=runtime._preexec)  # fmt: skip


def render(st: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Sandboxes: create to first output",
        "",
        f"Milliseconds from `Sandbox.create` to the first line of an exec'd `python3 -c 'print(1)'`: "
        f"{st['samples']} sequential sandboxes, then a burst of {st['burst']} created at once (each sample "
        "one sandbox; creates per second over the whole burst). The peers start a container of the same "
        "image content and print from it, with no control plane. The floor rows start the burst's execs "
        "straight from the runtime into one container already running, with no Vivace at all: what this "
        "machine's cores allow a burst of that many Python starts, whatever schedules them. The "
        "pre-created rows run against a worker with `--sandbox-pool` of the burst's size, once it is full. "
        "Published anchors, network included "
        "(ComputeSDK, May 2026): "
        + ", ".join(f"{name} {ms:,} ms" for name, ms in ANCHORS)
        + " median."
        + (f" Measured {st['measured_at']}." if st.get("measured_at") else ""),
        "",
    ]
    rows = st.get("rows") or {}
    docker = rows.get("docker", {}).get("p50_ms") if rows.get("docker", {}).get("status") == "ok" else None
    head = ["What", "p50 ms", "p99 ms", "Creates/s", "p50 vs docker run", "Version"]
    lines += [row(head), row(["---"] * len(head))]
    for key, label in ROWS.items():
        r = rows.get(key)
        if r is None:
            continue
        if r.get("status") != "ok":
            lines.append(row([label, r.get("status", "?"), "", "", "", r.get("error", "")[:80]]))
            continue
        ratio = f"{r['p50_ms'] / docker:.2f}x" if docker else "—"
        rate = f"{r['creates_per_s']:.1f}" if "creates_per_s" in r else "—"
        lines.append(
            row([label, f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", rate, ratio, r.get("version", "")])
        )
    return [*lines, ""]
