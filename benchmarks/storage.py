"""Storage: Dict and Queue operations per second, from the client and from a container, beside Redis.

One operation at a time (each waits for its answer, as user code that reads its own writes does),
100-byte values pickled, ``n`` of each of ``d[k] = v``, ``d[k]``, ``q.put(v)``, ``q.get()``. Vivace runs
as in ``cluster.py`` (SQLite store, crun worker); "from a container" is a function given the Dict and
Queue as arguments, its calls going through its worker to the control plane. Redis 7 (Debian's
``redis-server``, loopback TCP, ``appendonly yes``/``appendfsync everysec`` so that an acknowledged write
survives a killed server, as Vivace's do) through redis-py, from this process, with the same pickled
values. Redis is not reachable from a container (containers never reach the host's services), so it has
no container row. Volume throughput is ``benchmarks/volumes.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from benchmarks import coldstart, procs
from benchmarks.config import RunConfig
from benchmarks.markdown import row
from benchmarks.storage_ops import RedisDict, RedisQueue, run_ops

OPS = ("dict_put", "dict_get", "queue_put", "queue_get")
LABELS = {"dict_put": "`d[k] = v`", "dict_get": "`d[k]`", "queue_put": "`q.put(v)`", "queue_get": "`q.get()`"}
PEERS = {
    "vivace-client": "Vivace, from the client",
    "vivace-container": "Vivace, from a container",
    "redis": "Redis (redis-py, loopback TCP, AOF every second)",
}


def ops_for(config: RunConfig) -> tuple[int, int]:
    """(operations of each kind per repetition, repetitions)."""
    return (300, 1) if config.mode == "quick" else (1000, 3)


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    n, reps = ops_for(config)
    out: dict[str, Any] = {"n": n, "repetitions": reps, "peers": {},
                           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="vivace-storage-"))
    cgroups_before = coldstart._top_cgroups()
    try:
        log(f"storage: vivace ({reps} x {n} of each operation, client and container)")
        try:
            client, container = _vivace(work / "vivace", n, reps)
            out["peers"]["vivace-client"], out["peers"]["vivace-container"] = client, container
        except coldstart.Unavailable as err:
            out["peers"]["vivace-client"] = {"status": "not installed", "error": str(err)}
        except Exception as err:
            out["peers"]["vivace-client"] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
        log("storage: redis")
        out["peers"]["redis"] = _guard(lambda: _redis(work / "redis", n, reps))
    finally:
        coldstart._unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)
        coldstart._remove_cgroups(coldstart._top_cgroups() - cgroups_before)
    return out


def _guard(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return measure()
    except coldstart.Unavailable as err:
        return {"status": "not installed", "error": str(err)}
    except Exception as err:
        return {"status": "error", "error": f"{type(err).__name__}: {err}"}


def _summary(runs: list[dict[str, float]], version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "ok", "version": version, "runs": runs}
    for op in OPS:
        values = [r[op] for r in runs]
        out[op] = statistics.median(values)
        out[f"{op}_min"], out[f"{op}_max"] = min(values), max(values)
    return out


def _vivace(work: Path, n: int, reps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    coldstart._need_root("Vivace's crun runtime")
    coldstart._which("crun")
    import vivace
    from benchmarks.cluster import local_cluster

    with local_cluster(work, warm_pool=None):
        sys.modules.pop("benchmarks.storage_app", None)
        app: Any = importlib.import_module("benchmarks.storage_app")
        client_runs, container_runs = [], []
        with app.app.run():
            with vivace.Dict.ephemeral() as d, vivace.Queue.ephemeral() as q:
                app.ops_in_container.remote(d, q, 10)  # untimed: the container is up
            for _ in range(reps):
                with vivace.Dict.ephemeral() as d, vivace.Queue.ephemeral() as q:
                    client_runs.append(run_ops(d, q, n))
                with vivace.Dict.ephemeral() as d, vivace.Queue.ephemeral() as q:
                    container_runs.append(app.ops_in_container.remote(d, q, n))
    return _summary(client_runs, vivace.__version__), _summary(container_runs, vivace.__version__)


def _redis(work: Path, n: int, reps: int) -> dict[str, Any]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise coldstart.Unavailable("redis-server is not installed (apt-get install redis-server)")
    try:
        import redis
    except ImportError:
        raise coldstart.Unavailable("redis-py is not installed (the bench group has it)") from None
    with _redis_server(binary, work) as port:
        client = redis.Redis(host="127.0.0.1", port=port)
        version = str(client.info()["redis_version"])
        runs = []
        for i in range(reps):
            client.flushall()
            runs.append(run_ops(RedisDict(client, f"d{i}:"), RedisQueue(client, f"q{i}"), n))
        client.close()
    return _summary(runs, f"Redis {version}, redis-py {redis.__version__}")


@contextlib.contextmanager
def _redis_server(binary: str, work: Path) -> Iterator[int]:
    work.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no", "--logfile", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield port
    finally:
        procs.stop(proc, 10)


def render(st: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Storage: Dict and Queue operations",
        "",
        f"{st['n']:,} of each operation, one at a time (each waits for its answer), 100-byte values "
        f"pickled; operations per second, median of {st['repetitions']} repetition(s) with min-max; "
        "higher is better. Vivace's store is SQLite (each write committed before it is acknowledged); "
        "Redis runs with `appendonly yes` and `appendfsync everysec`. A container reaches the control "
        "plane through its worker; Redis is not reachable from containers, so it has no container row."
        + (f" Measured {st['measured_at']}." if st.get("measured_at") else ""),
        "",
    ]
    head = ["Who", "Version", *(LABELS[o] for o in OPS)]
    lines += [row(head), row(["---"] * len(head))]
    redis = st["peers"].get("redis") or {}
    for name, label in PEERS.items():
        r = st["peers"].get(name)
        if r is None:
            continue
        if r.get("status") != "ok":
            lines.append(row([label, f"{r.get('status')}: {r.get('error', '')}"[:160], *["—"] * len(OPS)]))
            continue
        cells = [label, str(r.get("version", ""))]
        for op in OPS:
            text = f"{r[op]:,.0f}"
            if r[f"{op}_min"] != r[f"{op}_max"]:
                text += f" ({r[f'{op}_min']:,.0f}-{r[f'{op}_max']:,.0f})"
            if name != "redis" and redis.get(op):
                text += f", {r[op] / redis[op]:.2f}x Redis"
            cells.append(text)
        lines.append(row(cells))
    return [*lines, ""]
