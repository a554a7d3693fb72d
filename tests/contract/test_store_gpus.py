"""Contract: GPUs are claimed once per live container, handed to the worker, and freed when it stops."""

from __future__ import annotations

from typing import Any

import pytest

from vivace.server.services import containers, workers
from vivace.server.store.base import IntegrityError

pytestmark = pytest.mark.timeout(60)

H100 = [{"type": "H100", "count": 2}]


def gpu_worker(h: Any, models: list[str], name: str = "gpu") -> str:
    gpus = [
        {"index": i, "uuid": f"GPU-{name}-{i}", "type": m, "memory_mib": 81559} for i, m in enumerate(models)
    ]
    return str(
        h.w(lambda tx: workers.register(tx, name, 64.0, 256 * 1024, {}, ["process"], "test", None, gpus))
    )


def tick(h: Any) -> dict[str, str]:
    h.w(containers.autoscale)
    return h.w(containers.schedule)  # type: ignore[no-any-return]


def started(h: Any, worker_id: str) -> dict[str, list[int]]:
    return {a.container_id: a.gpus for a in h.w(lambda tx: workers.poll(tx, worker_id, [])).start}


def test_gpu_containers_get_distinct_indices_wait_beyond_capacity_and_free_them_on_stop(h: Any) -> None:
    wid = gpu_worker(h, ["H100"] * 3)
    fid = h.function(gpu=H100, max_containers=3)
    h.call(fid, 3)
    placed = tick(h)
    assert list(placed.values()) == [wid]  # two GPUs each: only one of three fits on three H100s
    first = started(h, wid)
    assert list(first.values()) == [[0, 1]]
    waiting = h.sql("SELECT id FROM containers WHERE function_id = ? AND state = 'pending'", (fid,))
    assert len(waiting) == 2
    assert tick(h) == {}  # and they keep waiting, not failing
    assert h.w(containers.unplaceable) == []

    (cid,) = first
    h.stop(cid)
    assert h.sql("SELECT * FROM gpu_claims") == []
    placed = tick(h)
    assert len(placed) == 1
    (second,) = started(h, wid).values()
    assert second == [0, 1]
    assert [g for (g,) in h.sql("SELECT gpu_index FROM gpu_claims ORDER BY 1")] == [0, 1]
    assert h.one("SELECT gpus FROM containers WHERE id = ?", (cid,)) == "[0, 1]"  # kept for the record


def test_a_cpu_function_shares_a_gpu_worker_without_gpus(h: Any) -> None:
    wid = gpu_worker(h, ["L4"])
    fid = h.function()
    h.call(fid, 1)
    assert tick(h)
    assert list(started(h, wid).values()) == [[]]
    assert h.sql("SELECT * FROM gpu_claims") == []


def test_fallback_choice_and_worker_listing(h: Any) -> None:
    wid = gpu_worker(h, ["A100-80GB", "A100-80GB"])
    fid = h.function(gpu=[{"type": "H100", "count": 1}, {"type": "A100", "count": 2}])
    h.call(fid, 1)
    assert tick(h)
    assert list(started(h, wid).values()) == [[0, 1]]
    (listed,) = h.w(workers.list_workers)
    assert [g["type"] for g in listed["gpus"]] == ["A100-80GB", "A100-80GB"]
    assert listed["gpus"][0]["uuid"] == "GPU-gpu-0"


def test_a_lost_worker_frees_its_gpus(h: Any) -> None:
    wid = gpu_worker(h, ["H100", "H100"])
    fid = h.function(gpu=H100)
    h.call(fid, 1)
    assert tick(h)
    assert len(h.sql("SELECT * FROM gpu_claims")) == 2
    h.w(lambda tx: tx.execute("UPDATE workers SET heartbeat_at = 0 WHERE id = ?", (wid,)))
    dead, _ = h.w(lambda tx: workers.reap_dead_workers(tx, 1.0))
    assert dead == [wid]
    assert h.sql("SELECT * FROM gpu_claims") == []


def test_a_gpu_request_no_worker_could_ever_hold_is_reported_with_the_reason(h: Any) -> None:
    gpu_worker(h, ["L4", "L4"])
    fid = h.function(gpu=[{"type": "H100", "count": 1}, {"type": None, "count": 4}])
    h.call(fid, 1)
    assert tick(h) == {}
    ((_, reason),) = h.w(containers.unplaceable)
    assert "needs GPU H100:1 or any:4" in reason and "2 x L4" in reason


def test_no_gpu_index_can_be_claimed_twice_on_a_worker(h: Any) -> None:
    wid = gpu_worker(h, ["H100"])

    def claim(container_id: str) -> Any:
        return lambda tx: tx.execute(
            "INSERT INTO gpu_claims (worker_id, gpu_index, container_id) VALUES (?, 0, ?)",
            (wid, container_id),
        )

    h.w(claim("ta-one"))
    with pytest.raises(IntegrityError):
        h.w(claim("ta-two"))
