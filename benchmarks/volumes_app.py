"""The functions ``benchmarks/volumes.py`` runs inside containers: write a big file to a mounted volume
and commit it, and read one back. Containers import it by name."""

import os
import time

import vivace

app = vivace.App("bench-volumes")
vol = vivace.Volume.from_name("bench-volume", create_if_missing=True)
CHUNK = 1 << 20


@app.function(volumes={"/data": vol}, cpu=1.0, memory=1024, timeout=1800)
def write_big(mib, stamp):
    """Write ``mib`` MiB to /data (fsync'd), then commit; seconds for each."""
    block = bytearray(os.urandom(CHUNK))
    block[:16] = stamp.encode().ljust(16, b"\0")[:16]  # every run's content is new to the store
    start = time.perf_counter()
    with open("/data/container.bin", "wb") as f:
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    wrote = time.perf_counter()
    vol.commit()
    return {"write_s": wrote - start, "commit_s": time.perf_counter() - wrote}


@app.function(volumes={"/data": vol}, cpu=1.0, memory=1024, timeout=1800, single_use_containers=True)
def read_big(path):
    """Read /data/``path`` whole; its size and the seconds it took (each call is a new container)."""
    start = time.perf_counter()
    n = 0
    with open(os.path.join("/data", path), "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            n += len(chunk)
    return {"bytes": n, "read_s": time.perf_counter() - start}
