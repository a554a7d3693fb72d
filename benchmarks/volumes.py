"""Volumes: throughput of one big file (1 GiB; 256 MiB with --quick) in and out of a Volume, beside the
same file on the local disk.

- **Local disk**: write it (1 MiB writes, then ``fsync``) and read it back, on the filesystem the
  control plane's blob store uses. The page cache is not dropped, on either side.
- **Client**: ``batch_upload().put_file`` (hash, stream to the blob store, which ``fsync``s, commit) and
  ``read_file`` (streamed, discarded). The control plane runs in this process, as in the other rows.
- **Container** (crun): a function writes the file to its mount (``fsync``), then ``vol.commit()`` (hash
  and upload by the worker, commit); another function, a new container each call, reads a file the
  client uploaded. Its call time includes the container's start and assembling the 1 GiB mount.

Each repetition writes new content (a stamp in the first bytes), so no upload is skipped as a duplicate.
"""

from __future__ import annotations

import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks import coldstart
from benchmarks.config import RunConfig
from benchmarks.markdown import row

CHUNK = 1 << 20
ROWS = {
    "local_write": "Local disk: write + fsync",
    "local_read": "Local disk: read",
    "client_upload": "Client: `batch_upload` (hash, upload, commit)",
    "client_read": "Client: `read_file`",
    "container_write": "Container: write to the mount + fsync",
    "container_commit": "Container: `vol.commit()` (hash, upload, commit)",
    "container_read": "Container: read from the mount",
    "container_call": "Container: call that reads it (start + mount + read)",
}


def size_for(config: RunConfig) -> tuple[int, int]:
    """(MiB per file, repetitions)."""
    return (256, 1) if config.mode == "quick" else (1024, 3)


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    mib, reps = size_for(config)
    out: dict[str, Any] = {"mib": mib, "repetitions": reps,
                           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="vivace-volumes-"))
    cgroups_before = coldstart._top_cgroups()
    try:
        log(f"volumes: {reps} x {mib} MiB, local disk, client and container")
        out.update(_measure(work, mib, reps))
        out["status"] = "ok"
    except coldstart.Unavailable as err:
        out.update(status="not installed", error=str(err))
    except Exception as err:
        out.update(status="error", error=f"{type(err).__name__}: {err}")
    finally:
        coldstart._unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)
        coldstart._remove_cgroups(coldstart._top_cgroups() - cgroups_before)
    return out


def _write_local(path: Path, mib: int, stamp: str) -> float:
    block = bytearray(os.urandom(CHUNK))
    block[:16] = stamp.encode().ljust(16, b"\0")[:16]
    start = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def _read_local(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while f.read(CHUNK):
            pass
    return time.perf_counter() - start


def _measure(work: Path, mib: int, reps: int) -> dict[str, Any]:
    coldstart._need_root("Vivace's crun runtime")
    coldstart._which("crun")
    import vivace
    from benchmarks.cluster import local_cluster

    secs: dict[str, list[float]] = {k: [] for k in ROWS}
    with local_cluster(work / "vivace", warm_pool=None):
        sys.modules.pop("benchmarks.volumes_app", None)
        app: Any = importlib.import_module("benchmarks.volumes_app")
        vol = app.vol
        for i in range(reps):
            local = work / f"local-{i}.bin"
            secs["local_write"].append(_write_local(local, mib, f"local-{i}-{time.time()}"))
            secs["local_read"].append(_read_local(local))
            start = time.perf_counter()
            with vol.batch_upload(force=True) as batch:
                batch.put_file(local, "/client.bin")
            secs["client_upload"].append(time.perf_counter() - start)
            local.unlink()
            start, n = time.perf_counter(), 0
            for chunk in vol.read_file("/client.bin"):
                n += len(chunk)
            secs["client_read"].append(time.perf_counter() - start)
            if n != mib * CHUNK:
                raise RuntimeError(f"read_file returned {n} bytes, not {mib * CHUNK}")
            with app.app.run():
                wrote = app.write_big.remote(mib, f"ctr-{i}-{time.time()}")
                start = time.perf_counter()
                got = app.read_big.remote("client.bin")
                secs["container_call"].append(time.perf_counter() - start)
            if got["bytes"] != mib * CHUNK:
                raise RuntimeError(f"the container read {got['bytes']} bytes, not {mib * CHUNK}")
            secs["container_write"].append(wrote["write_s"])
            secs["container_commit"].append(wrote["commit_s"])
            secs["container_read"].append(got["read_s"])
        listed = {e.path: e.size for e in vol.listdir("/")}
        if listed.get("container.bin") != mib * CHUNK:
            raise RuntimeError(f"the container's committed file is not in the volume: {listed}")
    rows: dict[str, Any] = {}
    for key, values in secs.items():
        rates = [mib / s for s in values]
        rows[key] = {
            "seconds": values,
            "mib_s": statistics.median(rates),
            "mib_s_min": min(rates),
            "mib_s_max": max(rates),
            "seconds_median": statistics.median(values),
        }
    return {"rows": rows, "version": vivace.__version__}


def render(st: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Storage: Volume throughput",
        "",
        f"One {st['mib']:,} MiB file; MiB/s (median of {st['repetitions']} repetition(s), min-max) and "
        "seconds; higher MiB/s is better. The local disk is the filesystem the blob store uses; the page "
        "cache is not dropped on either side. Client rows include hashing and the control plane's "
        "`fsync`; the container's commit is the worker hashing and uploading the file. The last row is a "
        "whole call to a new container that mounts the volume (its start, assembling the mount from the "
        "worker's cache, and the read)."
        + (f" Measured {st['measured_at']}." if st.get("measured_at") else ""),
        "",
    ]
    if st.get("status") != "ok":
        return [*lines, f"Not measured: {st.get('status')}: {st.get('error', '')}", ""]
    rows = st["rows"]
    disk_w, disk_r = rows["local_write"]["mib_s"], rows["local_read"]["mib_s"]
    head = ["What", "MiB/s", "Seconds", "vs local disk"]
    lines += [row(head), row(["---"] * len(head))]
    for key, label in ROWS.items():
        r = rows[key]
        rate = f"{r['mib_s']:,.0f}"
        if r["mib_s_min"] != r["mib_s_max"]:
            rate += f" ({r['mib_s_min']:,.0f}-{r['mib_s_max']:,.0f})"
        base = disk_r if "read" in key else disk_w
        ratio = "—" if key.startswith("local") else f"{r['mib_s'] / base:.2f}x"
        lines.append(row([label, rate, f"{r['seconds_median']:.2f}", ratio]))
    return [*lines, ""]
