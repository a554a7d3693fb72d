"""Containers: created by the autoscaler, placed by the scheduler, started and stopped by workers.

States: ``pending`` (no worker yet) → ``assigned`` (resources reserved on a worker) → ``running``
(process up) → ``stopping`` (asked to stop) → ``stopped`` (final). When a container stops, every
input it still holds goes back to the queue as a system failure and its lease token is dead.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from vivace.protocol import ids
from vivace.protocol.calls import OutputStatus
from vivace.server.autoscaler.policy import IdleContainer, Snapshot, plan
from vivace.server.errors import NotFound
from vivace.server.scheduler.placement import GpuChoice, Request, WorkerCapacity, place, unfit_reason
from vivace.server.services import logs, metering
from vivace.server.services.calls import fail_input, fail_pending
from vivace.server.store.base import Tx

LIVE = "('pending', 'assigned', 'running')"

MAX_START_FAILURES = 3  # containers in a row that exit before starting: then the function is broken
MAX_UNPLACED = 256
"""Containers of one function waiting for a worker, at most. A deep backlog (a million queued inputs and
no ``max_containers``) would otherwise become as many container rows in one tick, and every later tick
would read them all; the autoscaler adds more as these are placed."""


@dataclass
class AutoscaleResult:
    created: list[str]
    stopping: list[str]
    capped: bool = False
    """Some function wanted more containers than ``MAX_UNPLACED`` allowed: tick again once placed."""
    failed: set[str] = field(default_factory=set)
    """Calls whose waiting inputs failed: no container may start for them (a spend limit)."""


def autoscale(tx: Tx, blocked: dict[str, str] | None = None) -> AutoscaleResult:
    """Start and stop containers towards each function's desired count. ``blocked``: reached spend
    limits (``metering.reached``): their apps start none, and their waiting inputs fail with the
    reason where no container of theirs is left to serve them."""
    result = AutoscaleResult([], [])
    blocked = blocked or {}
    funcs = tx.fetchall(
        "SELECT f.id, f.app_id, f.spec, f.backlog, f.running, f.start_failures, a.name FROM functions f "
        "JOIN apps a ON a.id = f.app_id WHERE f.active = 1"
    )
    for fid, app_id, spec_json, backlog, running, start_failures, app_name in funcs:
        spec = json.loads(spec_json)
        broken = int(start_failures) >= MAX_START_FAILURES  # keep no warm containers of a broken function
        rows = tx.fetchall(
            f"SELECT id, held, last_active_at, state FROM containers WHERE function_id = ? AND state IN {LIVE}",
            (fid,),
        )
        snap = Snapshot(
            backlog=int(backlog),
            running=int(running),
            live=len(rows),
            min_containers=0 if broken else spec["min_containers"],
            max_containers=spec["max_containers"],
            buffer_containers=0 if broken else spec["buffer_containers"],
            # a batched container takes up to a batch at a time
            target_inputs=max(spec["target_inputs"], spec.get("batch_max_size") or 1),
            scaledown_window=spec["scaledown_window"],
            idle=tuple(IdleContainer(r[0], float(r[2])) for r in rows if r[1] == 0),
        )
        p = plan(snap, tx.now)
        start = p.start
        why = metering.why_blocked(blocked, app_name) if blocked and start else None
        if why is not None:
            start = 0
            if not rows and int(backlog) > 0:
                result.failed |= fail_pending(tx, fid, why, "ResourceExhaustedError")
                line = {
                    "app_id": app_id,
                    "function_id": fid,
                    "stream": "system",
                    "line": f"no new containers: {why}",
                }
                logs.append(tx, [line])
        room = max(0, MAX_UNPLACED - sum(1 for r in rows if r[3] == "pending"))
        if start > room:
            result.capped = True
        for _ in range(min(start, room)):
            result.created.append(create_container(tx, fid, app_id, spec))
        for cid in p.stop:
            request_stop(tx, cid, "scaled down")
            result.stopping.append(cid)
    return result


def create_container(tx: Tx, function_id: str, app_id: str, spec: dict[str, Any]) -> str:
    cid = ids.new_id(ids.CONTAINER)
    tx.execute(
        "INSERT INTO containers (id, function_id, app_id, state, lease_token, cpu, memory, created_at, "
        "last_active_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
        (cid, function_id, app_id, secrets.token_hex(16), spec["cpu"], spec["memory"], tx.now, tx.now),
    )
    return cid


def schedule(tx: Tx) -> dict[str, str]:
    """Place pending containers on live workers; returns ``{container: worker}``."""
    pending = tx.fetchall(
        "SELECT c.id, c.cpu, c.memory, f.spec FROM containers c JOIN functions f ON f.id = c.function_id "
        "WHERE c.state = 'pending' ORDER BY c.created_at LIMIT 500"
    )
    if not pending:
        return {}
    workers = _capacities(tx)
    reqs = [_request(cid, cpu, mem, spec) for cid, cpu, mem, spec in pending]
    placed = place(reqs, workers)
    by_id = {r.id: r for r in reqs}
    for cid, p in placed.items():
        r = by_id[cid]
        tx.execute(
            "UPDATE containers SET state = 'assigned', worker_id = ?, assigned_at = ?, gpus = ? WHERE id = ?",
            (p.worker, tx.now, json.dumps(list(p.gpus)) if p.gpus else None, cid),
        )
        tx.execute(
            "UPDATE workers SET cpu_used = cpu_used + ?, memory_used = memory_used + ? WHERE id = ?",
            (r.cpu, r.memory, p.worker),
        )
        for index in p.gpus:  # the primary key refuses a GPU another live container holds
            tx.execute(
                "INSERT INTO gpu_claims (worker_id, gpu_index, container_id) VALUES (?, ?, ?)",
                (p.worker, index, cid),
            )
    metering.price_placements(tx, {cid: (p.worker, tuple(p.gpus)) for cid, p in placed.items()})
    return {cid: p.worker for cid, p in placed.items()}


def _request(cid: str, cpu: Any, memory: Any, spec_json: str) -> Request:
    spec = json.loads(spec_json)
    choices = tuple(GpuChoice(c["type"], int(c["count"])) for c in spec.get("gpu") or ())
    return Request(
        cid,
        float(cpu),
        int(memory),
        spec.get("runtime"),
        choices,
        isolated=bool(spec.get("block_network")),
        image=bool(spec.get("image_id")),
        sandbox=spec.get("sandbox") is not None,
    )


def _capacities(tx: Tx, *, empty: bool = False) -> list[WorkerCapacity]:
    """Live workers as the scheduler sees them: free resources (or all of them, ``empty``) and GPUs."""
    workers = [
        WorkerCapacity(
            wid,
            float(cpu),
            int(mem),
            0.0 if empty else float(cpu_used),
            0 if empty else int(mem_used),
            runtimes=tuple(json.loads(runtimes)),
            gpus={int(g["index"]): str(g["type"]) for g in json.loads(gpus or "[]")},
        )
        for wid, cpu, mem, cpu_used, mem_used, runtimes, gpus in tx.fetchall(
            "SELECT id, cpu, memory, cpu_used, memory_used, runtimes, gpus FROM workers WHERE state = 'alive'"
        )
    ]
    if not empty and any(w.gpus for w in workers):
        by_id = {w.id: w for w in workers}
        for wid, index in tx.fetchall("SELECT worker_id, gpu_index FROM gpu_claims"):
            if wid in by_id:
                by_id[wid].gpus_used.add(int(index))
    return workers


def unplaceable(tx: Tx) -> list[tuple[str, str]]:
    """Pending containers that no live worker could hold even when empty: (container, reason)."""
    workers = _capacities(tx, empty=True)
    if not workers:
        return []
    out = []
    for cid, cpu, mem, spec_json in tx.fetchall(
        "SELECT c.id, c.cpu, c.memory, f.spec FROM containers c JOIN functions f ON f.id = c.function_id "
        "WHERE c.state = 'pending'"
    ):
        reason = unfit_reason(_request(cid, cpu, mem, spec_json), workers)
        if reason is not None:
            out.append((cid, reason))
    return out


DEFAULT_STARTUP_TIMEOUT = 300.0


def stuck_starting(tx: Tx) -> list[tuple[str, float]]:
    """Containers whose runtime has not asked for work within the function's ``startup_timeout``."""
    out = []
    for cid, assigned_at, spec_json in tx.fetchall(
        "SELECT c.id, c.assigned_at, f.spec FROM containers c JOIN functions f ON f.id = c.function_id "
        "WHERE c.state IN ('assigned', 'running') AND c.ready_at IS NULL"
    ):
        limit = json.loads(spec_json).get("startup_timeout") or DEFAULT_STARTUP_TIMEOUT
        if assigned_at is not None and tx.now - float(assigned_at) > float(limit):
            request_stop(tx, cid, f"startup timed out after {float(limit):g} s")
            out.append((cid, float(limit)))
    return out


# stop reasons after which a container drains: its running inputs may finish (up to the function's
# timeout) instead of the default grace, so that a deploy does not cut calls in flight
REDEPLOYED = "function redeployed"
ROLLED_BACK = "rolled back"
REMOVED = "function removed by a deploy"
DRAIN_REASONS = frozenset({REDEPLOYED, ROLLED_BACK, REMOVED})


def request_stop(tx: Tx, container_id: str, reason: str) -> bool:
    row = tx.fetchone("SELECT state FROM containers WHERE id = ?", (container_id,))
    if row is None:
        raise NotFound(f"container {container_id} does not exist")
    if row[0] == "pending":
        mark_stopped(tx, container_id, None, reason)
        return True
    if row[0] in ("assigned", "running"):
        tx.execute(
            "UPDATE containers SET state = 'stopping', stop_reason = COALESCE(stop_reason, ?) WHERE id = ?",
            (reason, container_id),
        )
        return True
    return False


def mark_stopped(
    tx: Tx, container_id: str, exit_code: int | None, reason: str, *, at: float | None = None
) -> set[str]:
    """Final state: free the worker's resources and requeue held inputs. Returns calls touched.

    ``at``: when it stopped, where that was before now (its worker says it exited a while ago; a lost
    worker's containers were last seen alive at its last heartbeat); never before it started."""
    row = tx.fetchone(
        "SELECT state, worker_id, cpu, memory, started_at, busy_since, app_id, function_id FROM containers "
        "WHERE id = ?",
        (container_id,),
    )
    if row is None or row[0] == "stopped":
        return set()
    state, worker_id, cpu, memory, started_at, busy_since, app_id, function_id = row
    when = tx.now if at is None else min(tx.now, at)
    when = max([when, *(float(t) for t in (started_at, busy_since) if t is not None)])
    tx.execute(
        "UPDATE containers SET state = 'stopped', stopped_at = ?, exit_code = ?, "
        "stop_reason = COALESCE(stop_reason, ?), busy_s = busy_s + CASE WHEN busy_since IS NULL THEN 0 "
        "ELSE ? - busy_since END, busy_since = NULL, held = 0 WHERE id = ?",
        (when, exit_code, reason, when, container_id),
    )
    final = tx.scalar("SELECT stop_reason FROM containers WHERE id = ?", (container_id,))
    if started_at is None:
        said = f"container {container_id} stopped before it started: {final}"
    else:
        said = f"container {container_id} stopped after {when - float(started_at):.1f} s: {final}"
    logs.system(tx, app_id, said, stream="platform", function_id=function_id, container_id=container_id)
    if worker_id is not None and state != "pending":
        tx.execute(
            "UPDATE workers SET cpu_used = cpu_used - ?, memory_used = memory_used - ? WHERE id = ?",
            (cpu, memory, worker_id),
        )
        tx.execute("DELETE FROM gpu_claims WHERE container_id = ?", (container_id,))
    calls: set[str] = set()
    err = {"type": "ContainerLost", "message": f"container {container_id} stopped: {reason}"}
    for (seq,) in tx.fetchall(
        "SELECT seq FROM inputs WHERE container_id = ? AND state = 'leased'", (container_id,)
    ):
        call = fail_input(tx, int(seq), OutputStatus.SYSTEM, err, retryable=False)
        if call:
            calls.add(call)
    tx.execute("UPDATE sandboxes SET live_name = NULL WHERE container_id = ?", (container_id,))  # name free
    return calls


def get_container(tx: Tx, container_id: str) -> dict[str, Any]:
    rows = list_containers(tx, container_id=container_id, include_stopped=True)
    if not rows:
        raise NotFound(f"container {container_id} does not exist")
    return rows[0]


def list_containers(
    tx: Tx, *, app_id: str | None = None, container_id: str | None = None, include_stopped: bool = False
) -> list[dict[str, Any]]:
    where, params = [], []
    if app_id:
        where.append("c.app_id = ?")
        params.append(app_id)
    if container_id:
        where.append("c.id = ?")
        params.append(container_id)
    if not include_stopped:
        where.append("c.state <> 'stopped'")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    rows = tx.fetchall(
        "SELECT c.id, c.app_id, f.name, c.worker_id, c.state, c.created_at, c.started_at, c.stopped_at, c.held, "
        "c.served, c.exit_code, c.stop_reason, c.gpus, c.assigned_at, c.image_ready_at, c.ready_at, c.pool, "
        "c.gpu_type, c.cpu, c.memory, c.rate, c.cpu_used_s, c.memory_peak "
        "FROM containers c JOIN functions f ON f.id = c.function_id "
        f"{clause} ORDER BY c.created_at DESC LIMIT 500",
        params,
    )
    keys = (
        "container_id",
        "app_id",
        "function",
        "worker_id",
        "state",
        "created_at",
        "started_at",
        "stopped_at",
        "inputs_held",
        "inputs_served",
        "exit_code",
        "stop_reason",
        "gpus",
        "assigned_at",
        "image_ready_at",
        "ready_at",
        "pool",
        "gpu_type",
        "cpu",
        "memory",
        "rate_per_s",
        "cpu_used_s",
        "memory_peak",
    )
    out = [dict(zip(keys, r, strict=True)) for r in rows]
    for c in out:
        c["gpus"] = json.loads(c["gpus"]) if c["gpus"] else []
    return out
