"""Functions that mount one volume read-write and read-only (tests/isolation/test_volumes.py)."""

import os

import vivace

app = vivace.App("voluminous")
vol = vivace.Volume.from_name("iso-volume", create_if_missing=True)


@app.function(volumes={"/data": vol}, scaledown_window=2)
def write(path, text, commit=True):
    """Write ``text`` to ``/data/path``; commit unless told not to (exit commits anyway)."""
    full = os.path.join("/data", path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)
    if commit:
        vol.commit()
    return sorted(os.listdir("/data"))


@app.function(volumes={"/mnt/vol": vol})
def read(path, reload=True):
    """The text at ``path`` in the volume (None if absent), after a reload; and who owns the mount."""
    if reload:
        vol.reload()
    full = os.path.join("/mnt/vol", path)
    st = os.stat("/mnt/vol")
    text = None
    if os.path.exists(full):
        with open(full) as f:
            text = f.read()
    return {"text": text, "uid": st.st_uid, "writable": os.access("/mnt/vol", os.W_OK)}


@app.function(volumes={"/ro": vol.read_only()})
def read_only(path):
    """Read ``path`` through a read-only mount, then try to write beside it."""
    with open(os.path.join("/ro", path)) as f:
        text = f.read()
    try:
        with open("/ro/intruder.txt", "w") as f:
            f.write("no")
        outcome = "written"
    except OSError as err:
        outcome = os.strerror(err.errno or 0)
    return {"text": text, "write": outcome}


@app.function(volumes={"/data": vol})
def plant_links(canary):
    """Try to make the worker (root, on the host) read or write through links the container planted:
    links to a host directory and file the test owns, committed, then a reload that places a file at a
    path whose directory is such a link."""
    import io

    os.symlink(canary, "/data/link")
    os.symlink(os.path.join(canary, "secret.txt"), "/data/leak.txt")
    os.mkfifo("/data/fifo")
    vol.commit()  # must upload neither the host's file nor block on the fifo
    with vol.batch_upload(force=True) as batch:  # the volume gets a real directory called link
        batch.put_file(io.BytesIO(b"planted"), "/link/planted.txt")
    vol.reload()  # must replace the link with that directory, not write into the host's
    return {
        "link_is_link": os.path.islink("/data/link"),
        "planted": _read("/data/link/planted.txt"),
    }


def _read(path):
    with open(path) as f:
        return f.read()
