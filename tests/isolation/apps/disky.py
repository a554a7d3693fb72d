"""A function whose writable layer is a small filesystem of its own (ephemeral_disk)."""

import os

import vivace

app = vivace.App("disky")


def _fill(mib):
    """Write ``mib`` MiB to the container's own files; what stopped it, and the root's size."""
    st = os.statvfs("/")
    written = 0
    try:
        with open("/root/fill.bin", "wb") as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(mib):
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                written += 1
        outcome = "ok"
    except OSError as err:
        outcome = os.strerror(err.errno or 0)
    finally:
        if os.path.exists("/root/fill.bin"):
            os.unlink("/root/fill.bin")
    return {"size_mib": st.f_blocks * st.f_frsize >> 20, "written_mib": written, "outcome": outcome}


@app.function(ephemeral_disk=64)
def small_disk(mib):
    return _fill(mib)


@app.function()
def worker_disk(mib):
    return _fill(mib)
