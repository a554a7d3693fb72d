import vivace

app = vivace.App("storage-app")


@app.function()
def record(d, q, key, value):
    """Write to a Dict and a Queue it was given as arguments; return what it read back."""
    d[key] = value
    q.put((key, value))
    return d.get(key), d.put(key, "again", skip_if_exists=True)


@app.function()
def by_name(name):
    """Reach a Dict by name from inside a container."""
    return vivace.Dict.from_name(name).get("greeting")


@app.function(max_containers=20, cpu=0.05)
def drain(q, ready, worker, n):
    """Wait until ``n`` inputs run at once (a barrier on a Dict), then take items until the queue stays
    empty for a second; return this container's pid and what it took."""
    import os
    import time

    ready[worker] = os.getpid()
    deadline = time.monotonic() + 120
    while ready.len() < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {ready.len()} of {n} inputs ever ran at once")
        time.sleep(0.05)
    got = []
    while True:
        items = q.get_many(5, timeout=1.0)
        if not items:
            return os.getpid(), got
        got.extend(items)
