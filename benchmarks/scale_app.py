"""The function ``benchmarks/scale.py`` queues a million inputs for; no worker ever runs it."""

import vivace

app = vivace.App("bench-scale")


@app.function()
def noop(x: int) -> int:
    return x
