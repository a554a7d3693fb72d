"""Contract: concurrent leasing never hands one input to two containers, on both stores.

``one-store`` drives a single store from four threads (the writer groups their operations into shared
transactions); ``replicas`` gives each thread its own store on the same database, as several control
plane processes would have (separate connections and transactions racing for the same rows).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from vivace.server.services import calls
from vivace.server.store.base import Store, open_store

THREADS = 4
INPUTS = 200

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("replicas", [False, True], ids=["one-store", "replicas"])
def test_concurrent_leases_never_hand_out_an_input_twice(store: Store, h: Any, replicas: bool) -> None:
    fid = h.function(min_containers=THREADS, max_containers=THREADS)
    cts = h.containers(THREADS)
    call = h.call(fid)
    h.put(call, range(INPUTS))
    stores = [open_store(store.url) if replicas else store for _ in range(THREADS)]

    def drain(i: int) -> list[int]:
        cid, token = cts[i]
        got: list[int] = []
        while batch := stores[i].write_sync(lambda tx: calls.lease_inputs(tx, cid, token, 3)):
            got.extend(inp.seq for inp in batch)
        return got

    try:
        if replicas:
            for s in stores:
                s.start()
        with ThreadPoolExecutor(THREADS) as pool:
            per_thread = list(pool.map(drain, range(THREADS)))
    finally:
        if replicas:
            for s in stores:
                s.close()

    seqs = [seq for got in per_thread for seq in got]
    assert len(seqs) == len(set(seqs)) == INPUTS
    assert h.counters(fid) == (0, INPUTS)
    assert h.pending_count(fid) == 0
    for (cid, _), got in zip(cts, per_thread, strict=True):
        assert h.one("SELECT held FROM containers WHERE id = ?", (cid,)) == len(got)
        assert h.one(
            "SELECT COUNT(*) FROM inputs WHERE container_id = ? AND state = 'leased'", (cid,)
        ) == len(got)
