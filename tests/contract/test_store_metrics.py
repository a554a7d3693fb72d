"""Contract: what /metrics reads from the store, on both stores: gauges now, and histograms and
counters over what happened since the control plane started (each row counted once)."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from vivace.protocol.calls import OutputStatus
from vivace.server.services import metrics, workers
from vivace.server.services.workers import ContainerEvent, container_event


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(fam: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples if name is None or s.name == name}


def test_metrics_count_queue_containers_cold_starts_and_inputs_once(h: Any) -> None:
    wid = h.worker()
    h.w(lambda tx: workers.set_gpu_stats(tx, wid, [
        {"index": 0, "utilization": 42, "memory_used_mib": 1024, "memory_total_mib": 81920}]))  # fmt: skip
    fid = h.function("f", max_containers=1)
    app_id = h.one("SELECT app_id FROM functions WHERE id = ?", (fid,))
    before = h.call(fid, n=1)  # finished before the control plane "started": not counted
    (ct,) = h.containers(1)
    h.w(lambda tx: container_event(tx, wid, ContainerEvent(ct[0], "started", image_s=0.1)))
    (a,) = h.lease(ct)
    h.output(ct, a.seq)
    acc = h.w(metrics.start)
    h.call(fid, n=3)
    leased = h.lease(ct, 2)
    h.output(ct, leased[0].seq)
    h.output(ct, leased[1].seq, OutputStatus.FAILURE)
    fams = families(h.w(lambda tx: metrics.scrape(tx, acc)))
    labels = (("app", app_id), ("function", "f"))
    assert values(fams["vivace_queue_depth"]) == {labels: 1.0}
    assert values(fams["vivace_containers"]) == {(*labels, ("state", "running")): 1.0}
    finished = values(fams["vivace_inputs_finished"])
    assert finished == {(*labels, ("status", "success")): 1.0, (*labels, ("status", "failure")): 1.0}
    assert values(fams["vivace_input_duration_seconds"], "vivace_input_duration_seconds_count") == {
        labels: 2.0
    }
    # the container became ready before counting started: no cold start counted; a second scrape adds nothing
    assert values(fams["vivace_container_cold_start_seconds"]) == {}
    again = families(h.w(lambda tx: metrics.scrape(tx, acc)))
    assert values(again["vivace_inputs_finished"]) == finished
    gpu = values(fams["vivace_gpu_utilization_ratio"])
    assert list(gpu.values()) == [0.42] and dict(next(iter(gpu)))["gpu"] == "0"
    cores = values(fams["vivace_worker_cpu_cores"])
    assert list(cores.values()) == [64.0] and dict(next(iter(cores)))["pool"] == "default"
    assert before


def test_a_container_started_after_counting_began_is_in_the_cold_start_phases(h: Any) -> None:
    wid = h.worker()
    acc = h.w(metrics.start)
    fid = h.function("g", min_containers=1)
    (ct,) = h.containers(1)
    h.w(
        lambda tx: tx.execute(
            "UPDATE containers SET created_at = created_at - 5, assigned_at = assigned_at - 4 WHERE id = ?",
            (ct[0],),
        )
    )
    h.w(lambda tx: container_event(tx, wid, ContainerEvent(ct[0], "started", image_s=0.5)))
    h.lease(ct)  # asks for work: @enter done
    fams = families(h.w(lambda tx: metrics.scrape(tx, acc)))
    counts = values(fams["vivace_container_cold_start_seconds"], "vivace_container_cold_start_seconds_count")
    assert counts == {(("phase", p),): 1.0 for p in ("placement", "image", "start", "enter", "total")}
    sums = values(fams["vivace_container_cold_start_seconds"], "vivace_container_cold_start_seconds_sum")
    assert sums[(("phase", "total"),)] >= 5.0 and sums[(("phase", "start"),)] >= 0.5 - 1e-6
    assert fid
