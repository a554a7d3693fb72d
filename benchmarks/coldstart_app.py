"""The trivial function whose cold start ``benchmarks/coldstart.py`` times; containers import it by name,
so it imports only ``vivace``."""

import vivace

app = vivace.App("coldstart")


@app.function(scaledown_window=2)
def trivial(x: int) -> int:
    return x
