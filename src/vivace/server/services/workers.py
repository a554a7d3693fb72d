"""Workers: registration, the long-poll through which they learn what to start and stop, and liveness."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vivace.protocol import ids
from vivace.server.errors import Forbidden, Gone, NotFound
from vivace.server.services import logs
from vivace.server.services.containers import DRAIN_REASONS, MAX_START_FAILURES, mark_stopped
from vivace.server.store.base import Tx


def register(
    tx: Tx,
    name: str,
    cpu: float,
    memory: int,
    labels: dict[str, str],
    runtimes: list[str],
    version: str,
    token_id: str | None = None,
    gpus: list[dict[str, Any]] | None = None,
) -> str:
    """Add a live worker; ``gpus``: ``[{"index", "uuid", "type", "memory_mib"}]`` as validated by the API."""
    wid = ids.new_id(ids.WORKER)
    tx.execute(
        "INSERT INTO workers (id, name, state, cpu, memory, labels, runtimes, version, registered_at, heartbeat_at, "
        "token_id, gpus) VALUES (?, ?, 'alive', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            wid,
            name,
            cpu,
            memory,
            json.dumps(labels),
            json.dumps(runtimes),
            version,
            tx.now,
            tx.now,
            token_id,
            json.dumps(gpus or []),
        ),
    )
    return wid


@dataclass
class Assignment:
    container_id: str
    function_id: str
    app_id: str
    lease_token: str
    spec: dict[str, Any]
    definition: bytes | None
    gpus: list[int] = field(default_factory=list)  # the worker's GPU indices this container gets
    # {"image_id", "steps", "layers": [{"key", "digest", "size", "config"}], "mounts": [digest]}
    image: dict[str, Any] | None = None


@dataclass
class PollResult:
    start: list[Assignment] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    # containers to stop that may take longer than the default grace: seconds their inputs may run on
    # (a redeploy drains: the function's timeout)
    grace: dict[str, float] = field(default_factory=dict)


def poll(tx: Tx, worker_id: str, held: list[str]) -> PollResult:
    """Heartbeat a worker and tell it which containers to start and which to stop."""
    state = tx.scalar("SELECT state FROM workers WHERE id = ?", (worker_id,))
    if state is None:
        raise NotFound(f"worker {worker_id} is not registered")
    if state != "alive":
        raise Gone(f"worker {worker_id} was declared dead; register again", code="worker_dead")
    tx.execute("UPDATE workers SET heartbeat_at = ? WHERE id = ?", (tx.now, worker_id))
    if held:
        marks, vals = tx.in_list(held)
        tx.execute(
            f"UPDATE containers SET heartbeat_at = ? WHERE id IN {marks} AND worker_id = ?",
            (tx.now, *vals, worker_id),
        )
    result = PollResult()
    held_set = set(held)
    for cid, state_, fid, app_id, token, spec, definition, gpus, reason in tx.fetchall(
        "SELECT c.id, c.state, c.function_id, c.app_id, c.lease_token, f.spec, f.definition, c.gpus, "
        "c.stop_reason FROM containers c JOIN functions f ON f.id = c.function_id "
        "WHERE c.worker_id = ? AND c.state <> 'stopped'",
        (worker_id,),
    ):
        if state_ == "stopping":
            if cid in held_set:
                result.stop.append(cid)
                if reason in DRAIN_REASONS:
                    result.grace[cid] = float(json.loads(spec).get("timeout") or 300.0)
            else:
                mark_stopped(tx, cid, None, "stopped before it started")
        elif state_ == "assigned" and cid not in held_set:
            fspec = json.loads(spec)
            image = None
            if fspec.get("image_id"):
                from vivace.server.services import images

                info = images.get(tx, fspec["image_id"])
                image = {
                    "image_id": info.id,
                    "steps": info.steps,
                    "layers": info.layers,
                    "mounts": list(fspec.get("image_mounts") or []),
                }
            result.start.append(
                Assignment(
                    cid,
                    fid,
                    app_id,
                    token,
                    fspec,
                    None if definition is None else bytes(definition),
                    json.loads(gpus) if gpus else [],
                    image,
                )
            )
    # containers the worker still runs that the control plane has revoked (e.g. after a partition)
    if held:
        marks, vals = tx.in_list(held)
        for (cid,) in tx.fetchall(
            f"SELECT id FROM containers WHERE id IN {marks} AND (state = 'stopped' OR worker_id <> ?)",
            (*vals, worker_id),
        ):
            result.stop.append(cid)
        known = {r[0] for r in tx.fetchall(f"SELECT id FROM containers WHERE id IN {marks}", vals)}
        result.stop.extend(c for c in held if c not in known)
    return result


@dataclass
class ContainerEvent:
    """What a worker says happened to a container. Times are given as seconds ago (the worker's own
    monotonic clock), so that the store's clock dates them however late the report arrives."""

    container_id: str
    event: str  # started | exited
    exit_code: int | None = None
    reason: str | None = None
    ago: float = 0.0
    image_s: float | None = None  # started: seconds from its image ready to its process up
    cpu_used_s: float | None = None  # exited: the kernel's CPU accounting of its cgroup
    memory_peak: int | None = None  # exited: its cgroup's peak memory, bytes


def container_event(tx: Tx, worker_id: str, ev: ContainerEvent) -> set[str]:
    container_id = ev.container_id
    row = tx.fetchone("SELECT worker_id, assigned_at FROM containers WHERE id = ?", (container_id,))
    if row is None:
        raise NotFound(f"container {container_id} does not exist")
    if row[0] != worker_id:
        raise Forbidden(f"container {container_id} does not belong to worker {worker_id}")
    at = tx.now - ev.ago
    if ev.event == "started":
        at = max(at, float(row[1] or at))  # never before the control plane placed it
        image_ready = max(float(row[1] or at), at - ev.image_s) if ev.image_s is not None else None
        first = tx.execute(
            "UPDATE containers SET state = 'running', started_at = ?, image_ready_at = ?, heartbeat_at = ? "
            "WHERE id = ? AND state = 'assigned'",
            (at, image_ready, tx.now, container_id),
        )
        # a container that leased inputs before its start was reported (the report was delayed): running
        first += tx.execute(
            "UPDATE containers SET started_at = ?, image_ready_at = ? WHERE id = ? AND started_at IS NULL "
            "AND state IN ('running', 'stopping')",
            (at, image_ready, container_id),
        )
        if first:  # a replayed report says nothing twice
            _say_started(tx, container_id, at, image_ready)
        # a sandbox is ready once its process runs (a function's container, once its runtime asks for work)
        tx.execute(
            "UPDATE containers SET ready_at = ? WHERE id = ? AND ready_at IS NULL AND id IN "
            "(SELECT container_id FROM sandboxes)",
            (at, container_id),
        )
        return set()
    never_started = tx.scalar("SELECT ready_at FROM containers WHERE id = ?", (container_id,)) is None
    if ev.cpu_used_s is not None or ev.memory_peak is not None:
        tx.execute(
            "UPDATE containers SET cpu_used_s = ?, memory_peak = ? WHERE id = ?",
            (ev.cpu_used_s, ev.memory_peak, container_id),
        )
    exit_code, reason = ev.exit_code, ev.reason
    calls = mark_stopped(tx, container_id, exit_code, reason or "exited", at=at)
    if never_started:
        why = tx.scalar(
            "SELECT stop_reason FROM containers WHERE id = ?", (container_id,)
        )  # first reason wins
        calls |= _count_start_failure(tx, container_id, str(why or reason or "exited"))
    return calls


def _say_started(tx: Tx, container_id: str, up: float, image_ready: float | None) -> None:
    """The app's logs say where a container started and how long each phase before it took."""
    row = tx.fetchone(
        "SELECT c.app_id, c.function_id, c.created_at, c.assigned_at, w.name FROM containers c "
        "LEFT JOIN workers w ON w.id = c.worker_id WHERE c.id = ?",
        (container_id,),
    )
    if row is None:
        return
    app_id, function_id, created, assigned, worker = row
    parts = []
    if assigned is not None:
        parts.append(f"placed {float(assigned) - float(created):.2f} s")
        if image_ready is not None:
            parts += [f"image {image_ready - float(assigned):.2f} s", f"start {up - image_ready:.2f} s"]
    logs.system(
        tx,
        app_id,
        f"container {container_id} up on worker {worker} {up - float(created):.2f} s after it was "
        f"scheduled ({', '.join(parts)})",
        stream="platform",
        function_id=function_id,
        container_id=container_id,
    )


def _count_start_failure(tx: Tx, container_id: str, reason: str) -> set[str]:
    """Containers that cannot even start must not crash-loop forever: after a few, fail the backlog."""
    fid = tx.scalar("SELECT function_id FROM containers WHERE id = ?", (container_id,))
    tx.execute("UPDATE functions SET start_failures = start_failures + 1 WHERE id = ?", (fid,))
    if int(tx.scalar("SELECT start_failures FROM functions WHERE id = ?", (fid,))) < MAX_START_FAILURES:
        return set()
    from vivace.server.services.calls import fail_pending

    # the count stays up until a container starts or the function is redeployed: meanwhile the autoscaler
    # starts containers only for new inputs (not for min_containers), so a broken function never loops
    return fail_pending(
        tx,
        fid,
        f"containers of this function failed to start {MAX_START_FAILURES} times in a row; last: {reason}",
    )


def retire(tx: Tx, worker_id: str, reason: str) -> set[str]:
    """Declare a worker gone (it restarted under a new id): its containers stop, their inputs requeue."""
    calls: set[str] = set()
    if tx.scalar("SELECT state FROM workers WHERE id = ?", (worker_id,)) != "alive":
        return calls
    tx.execute("UPDATE workers SET state = 'dead' WHERE id = ?", (worker_id,))
    for cid, seen in tx.fetchall(
        "SELECT id, heartbeat_at FROM containers WHERE worker_id = ? AND state <> 'stopped'", (worker_id,)
    ):  # billed until last seen alive
        calls |= mark_stopped(tx, cid, None, reason, at=None if seen is None else float(seen))
    return calls


def reap_dead_workers(tx: Tx, timeout: float) -> tuple[list[str], set[str]]:
    dead = [
        r[0]
        for r in tx.fetchall(
            "SELECT id FROM workers WHERE state = 'alive' AND heartbeat_at < ?", (tx.now - timeout,)
        )
    ]
    calls: set[str] = set()
    for wid in dead:
        tx.execute("UPDATE workers SET state = 'dead' WHERE id = ?", (wid,))
        for cid, seen in tx.fetchall(
            "SELECT id, heartbeat_at FROM containers WHERE worker_id = ? AND state <> 'stopped'", (wid,)
        ):  # billed until last seen alive
            calls |= mark_stopped(tx, cid, None, "worker lost", at=None if seen is None else float(seen))
    return dead, calls


def list_workers(tx: Tx) -> list[dict[str, Any]]:
    rows = tx.fetchall(
        "SELECT id, name, state, cpu, memory, cpu_used, memory_used, labels, runtimes, version, heartbeat_at, "
        "gpus, gpu_stats, gpu_stats_at FROM workers WHERE state = 'alive' ORDER BY registered_at"
    )
    keys = (
        "worker_id",
        "name",
        "state",
        "cpu",
        "memory",
        "cpu_used",
        "memory_used",
        "labels",
        "runtimes",
        "version",
        "heartbeat_at",
        "gpus",
        "gpu_stats",
        "gpu_stats_at",
    )
    out = [dict(zip(keys, r, strict=True)) for r in rows]
    for w in out:
        w["labels"], w["runtimes"], w["gpus"] = (json.loads(w[k]) for k in ("labels", "runtimes", "gpus"))
        w["gpu_stats"] = json.loads(w["gpu_stats"] or "[]")
    return out


def set_gpu_stats(tx: Tx, worker_id: str, stats: list[dict[str, int]]) -> None:
    tx.execute(
        "UPDATE workers SET gpu_stats = ?, gpu_stats_at = ? WHERE id = ?",
        (json.dumps(stats), tx.now, worker_id),
    )


def worker_of(tx: Tx, container_id: str) -> tuple[str | None, str]:
    row = tx.fetchone("SELECT worker_id, state FROM containers WHERE id = ?", (container_id,))
    if row is None:
        raise NotFound(f"container {container_id} does not exist")
    return row[0], row[1]
