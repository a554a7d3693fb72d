"""The function ``benchmarks/storage.py`` runs inside a container: the same Dict and Queue operations
as the client's, timed there. Containers import it by name."""

import vivace
from benchmarks.storage_ops import run_ops

app = vivace.App("bench-storage")


@app.function()
def ops_in_container(d, q, n):
    return run_ops(d, q, n)
