"""What ``/metrics`` exports (Prometheus text format 0.0.4), read from the store.

Gauges are read at each scrape (queue depth, running inputs, containers by state, workers' resources
and GPUs, this month's spend). Histograms and counters (cold-start phases, input durations) accumulate
in the control plane from the rows written since it started: each scrape reads only what is new,
so a scrape stays cheap however large the store grows; a restart starts them from zero, as Prometheus
expects of a counter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from vivace.protocol.calls import FINAL
from vivace.server.services import metering
from vivace.server.store.base import Tx

COLD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
PHASES = (
    ("placement", "created_at", "assigned_at"),
    ("image", "assigned_at", "image_ready_at"),
    ("start", "image_ready_at", "started_at"),
    ("enter", "started_at", "ready_at"),
    ("total", "created_at", "ready_at"),
)
SCAN_LIMIT = 50_000  # rows one scrape reads at most per histogram (the rest at the next scrape)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: dict[tuple[tuple[str, str], ...], list[int]] = field(default_factory=dict)
    sums: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def observe(self, labels: dict[str, str], value: float) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        for i, le in enumerate(self.buckets):
            if value <= le:
                counts[i] += 1
        counts[-1] += 1  # +Inf
        self.sums[key] = self.sums.get(key, 0.0) + value


@dataclass
class Accumulated:
    """Histograms and counters over rows written since ``since``; cursors say what was read."""

    since: float
    output_cursor: int = 0
    ready_cursor: float = 0.0
    cold: Histogram = field(default_factory=lambda: Histogram(COLD_BUCKETS))
    durations: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    latency: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    finished: dict[tuple[tuple[str, str], ...], int] = field(default_factory=dict)


def start(tx: Tx) -> Accumulated:
    """Counting starts now: rows already in the store belong to an earlier life of the control plane."""
    last = tx.scalar("SELECT MAX(id) FROM outputs")
    return Accumulated(since=tx.now, output_cursor=int(last or 0), ready_cursor=tx.now)


def accumulate(tx: Tx, acc: Accumulated) -> None:
    cols = ", ".join(dict.fromkeys(c for _, a, b in PHASES for c in (a, b)))
    rows = tx.fetchall(
        f"SELECT ready_at, {cols} FROM containers WHERE ready_at > ? ORDER BY ready_at LIMIT ?",
        (acc.ready_cursor, SCAN_LIMIT),
    )
    names = list(dict.fromkeys(c for _, a, b in PHASES for c in (a, b)))
    for r in rows:
        acc.ready_cursor = max(acc.ready_cursor, float(r[0]))
        at = dict(zip(names, r[1:], strict=True))
        for phase, a, b in PHASES:
            if at[a] is not None and at[b] is not None:
                acc.cold.observe({"phase": phase}, max(0.0, float(at[b]) - float(at[a])))
    outs = tx.fetchall(
        "SELECT o.id, o.status, o.duration, f.name, COALESCE(a.name, a.id), o.created_at - i.created_at "
        "FROM outputs o JOIN inputs i ON i.call_id = o.call_id AND i.idx = o.idx JOIN calls c ON c.id = o.call_id "
        "JOIN functions f ON f.id = c.function_id JOIN apps a ON a.id = f.app_id "
        "WHERE o.id > ? AND o.part = ? ORDER BY o.id LIMIT ?",
        (acc.output_cursor, FINAL, SCAN_LIMIT),
    )
    for oid, status, duration, fn, app, latency in outs:
        acc.output_cursor = max(acc.output_cursor, int(oid))
        labels = {"app": str(app or ""), "function": str(fn)}
        key = tuple(sorted({**labels, "status": str(status)}.items()))
        acc.finished[key] = acc.finished.get(key, 0) + 1
        if duration is not None:
            acc.durations.observe(labels, float(duration))
        if latency is not None:
            acc.latency.observe(labels, max(0.0, float(latency)))


# -- the exposition -------------------------------------------------------------------------------------
def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, labels: dict[str, str] | Iterable[tuple[str, str]], value: float) -> None:
        pairs = sorted(labels.items()) if isinstance(labels, dict) else list(labels)
        self.lines.append(f"{name}{_labels(pairs)} {_num(value)}")

    def histogram(self, name: str, help_: str, h: Histogram) -> None:
        self.family(name, "histogram", help_)
        for key in sorted(h.counts):
            counts = h.counts[key]
            for le, n in zip([*(repr(float(b)) for b in h.buckets), "+Inf"], counts, strict=True):
                self.sample(f"{name}_bucket", [*key, ("le", le)], n)
            self.sample(f"{name}_sum", key, h.sums[key])
            self.sample(f"{name}_count", key, counts[-1])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(tx: Tx, acc: Accumulated) -> str:
    out = Exposition()
    funcs = tx.fetchall(
        "SELECT a.name, a.id, f.name, f.backlog, f.running FROM functions f JOIN apps a ON a.id = f.app_id "
        "WHERE f.active = 1 AND a.state <> 'stopped' ORDER BY a.name, f.name"
    )
    out.family("vivace_queue_depth", "gauge", "Inputs waiting for a container, per function.")
    for app, app_id, fn, backlog, _ in funcs:
        out.sample("vivace_queue_depth", {"app": app or app_id, "function": fn}, max(0, int(backlog)))
    out.family("vivace_inputs_running", "gauge", "Inputs running in containers, per function.")
    for app, app_id, fn, _, running in funcs:
        out.sample("vivace_inputs_running", {"app": app or app_id, "function": fn}, max(0, int(running)))
    out.family("vivace_containers", "gauge", "Live containers by state, per function.")
    for app, app_id, fn, state, n in tx.fetchall(
        "SELECT a.name, a.id, f.name, c.state, COUNT(*) FROM containers c JOIN functions f ON f.id = c.function_id "
        "JOIN apps a ON a.id = c.app_id WHERE c.state <> 'stopped' GROUP BY a.name, a.id, f.name, c.state "
        "ORDER BY a.name, f.name, c.state"
    ):
        out.sample("vivace_containers", {"app": app or app_id, "function": fn, "state": state}, int(n))
    _workers(tx, out)
    out.histogram("vivace_container_cold_start_seconds",
                  "Seconds of each phase of a container's start: placement (scheduled to placed), image "
                  "(placed to image ready), start (to process up), enter (to @enter done), total.", acc.cold)  # fmt: skip
    out.histogram("vivace_input_duration_seconds", "Seconds each input ran in its container (final outputs).",
                  acc.durations)  # fmt: skip
    out.histogram("vivace_input_latency_seconds",
                  "Seconds from an input's arrival to its final output: what its caller waited (queue, cold "
                  "start, retries and run).", acc.latency)  # fmt: skip
    out.family("vivace_inputs_finished_total", "counter", "Inputs that got their final output, by status.")
    for key in sorted(acc.finished):
        out.sample("vivace_inputs_finished_total", key, acc.finished[key])
    since = metering.period_start("month", tx.now)
    spend: dict[str, float] = {}
    for m in metering.meters(tx, since):
        spend[m.app] = spend.get(m.app, 0.0) + m.total
    out.family(
        "vivace_spend_month",
        "gauge",
        "What each app's containers cost this month (UTC) at their pools' prices.",
    )
    for app in sorted(spend):
        out.sample("vivace_spend_month", {"app": app}, round(spend[app], 9))
    return out.text()


def _workers(tx: Tx, out: Exposition) -> None:
    rows = tx.fetchall(
        "SELECT id, name, cpu, memory, cpu_used, memory_used, labels, gpus, gpu_stats FROM workers "
        "WHERE state = 'alive' ORDER BY name"
    )
    gauges: dict[str, tuple[str, list[tuple[dict[str, str], float]]]] = {
        "vivace_worker_cpu_cores": ("Cores a worker offers.", []),
        "vivace_worker_cpu_cores_reserved": ("Cores reserved by its containers.", []),
        "vivace_worker_memory_bytes": ("Memory a worker offers.", []),
        "vivace_worker_memory_bytes_reserved": ("Memory reserved by its containers.", []),
        "vivace_gpu_utilization_ratio": ("How busy each GPU was when last sampled (NVML), 0 to 1.", []),
        "vivace_gpu_memory_used_bytes": ("GPU memory in use when last sampled (NVML).", []),
    }
    for wid, name, cpu, mem, cpu_used, mem_used, labels_json, gpus_json, stats_json in rows:
        labels = {"worker": str(name), "worker_id": str(wid), "pool": metering.pool_of(labels_json)}
        gauges["vivace_worker_cpu_cores"][1].append((labels, float(cpu)))
        gauges["vivace_worker_cpu_cores_reserved"][1].append((labels, float(cpu_used)))
        gauges["vivace_worker_memory_bytes"][1].append((labels, int(mem) << 20))
        gauges["vivace_worker_memory_bytes_reserved"][1].append((labels, int(mem_used) << 20))
        types = {int(g["index"]): str(g["type"]) for g in json.loads(gpus_json or "[]")}
        for s in json.loads(stats_json or "[]"):
            gl = {**labels, "gpu": str(s["index"]), "type": types.get(int(s["index"]), "")}
            gauges["vivace_gpu_utilization_ratio"][1].append((gl, int(s["utilization"]) / 100))
            gauges["vivace_gpu_memory_used_bytes"][1].append((gl, int(s["memory_used_mib"]) << 20))
    for name, (help_, samples) in gauges.items():
        out.family(name, "gauge", help_)
        for labels_, value in samples:
            out.sample(name, labels_, value)


def scrape(tx: Tx, acc: Accumulated) -> str:
    accumulate(tx, acc)
    return render(tx, acc)


__all__ = ["Accumulated", "Histogram", "accumulate", "render", "scrape", "start"]
