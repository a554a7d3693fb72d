"""The call path: persist inputs, lease them to containers, accept outputs, deliver them by cursor.

Invariants (tested in tests/contract):
- an input is persisted before any container can see it, and is identified by ``(call_id, idx)``;
  uploading the same key twice stores it once;
- a lease belongs to a container (its ``lease_token``); an output under any other token is rejected;
- each input gets exactly one final output (``UNIQUE (call_id, idx, part)``), the first accepted;
- ``functions.backlog`` and ``functions.running`` move in the same transaction as the rows they count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vivace.protocol.calls import FINAL, OutputStatus
from vivace.protocol.functions import FunctionSpec
from vivace.server.errors import Conflict, Gone, NotFound
from vivace.server.services import logs, metering
from vivace.server.services.retry import RetryDecision, decide_retry
from vivace.server.store.base import Tx

MAX_SYSTEM_FAILURES = 5


@dataclass
class LeasedInput:
    seq: int
    call_id: str
    idx: int
    attempt: int
    args: bytes | None
    args_ref: str | None


@dataclass
class OutputIn:
    seq: int
    part: int
    status: str
    data: bytes | None
    data_ref: str | None
    error: str | None
    duration: float | None


@dataclass
class OutputsResult:
    accepted: int
    rejected: int
    calls: set[str]
    requeued_functions: set[str]


def create_call(tx: Tx, call_id: str, function_id: str, kind: str) -> bool:
    row = tx.fetchone("SELECT active FROM functions WHERE id = ?", (function_id,))
    if row is None:
        raise NotFound(f"function {function_id} does not exist")
    if not row[0]:
        raise Gone(f"function {function_id} belongs to an app that has stopped")
    existing = tx.fetchone("SELECT function_id FROM calls WHERE id = ?", (call_id,))
    if existing is not None:
        if existing[0] != function_id:
            raise Conflict(f"call {call_id} already exists for another function")
        return False
    tx.execute(
        "INSERT INTO calls (id, function_id, kind, created_at) VALUES (?, ?, ?, ?)",
        (call_id, function_id, kind, tx.now),
    )
    return True


def put_inputs(
    tx: Tx, call_id: str, items: list[tuple[int, bytes | None, str | None]], total: int | None
) -> tuple[str, int]:
    """Persist inputs idempotently; returns (function_id, number newly stored)."""
    call = tx.fetchone("SELECT function_id, cancelled, inputs_total FROM calls WHERE id = ?", (call_id,))
    if call is None:
        raise NotFound(f"function call {call_id} does not exist")
    function_id, cancelled, known_total = call
    if cancelled:
        raise Gone(f"function call {call_id} was cancelled")
    active = tx.scalar("SELECT active FROM functions WHERE id = ?", (function_id,))
    if not active:
        raise Gone(f"the app of function call {call_id} has stopped")
    added = 0
    for idx, args, ref in items:
        added += tx.execute(
            "INSERT INTO inputs (call_id, idx, function_id, args, args_ref, state, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT (call_id, idx) DO NOTHING",
            (call_id, idx, function_id, args, ref, tx.now),
        )
    if added:
        tx.execute("UPDATE functions SET backlog = backlog + ? WHERE id = ?", (added, function_id))
        tx.execute("UPDATE calls SET inputs_added = inputs_added + ? WHERE id = ?", (added, call_id))
    if total is not None and known_total is None:
        tx.execute("UPDATE calls SET inputs_total = ? WHERE id = ?", (total, call_id))
    return str(function_id), added


BURST_AFTER = 0.5  # seconds an input waits for a container below target before one above takes it


def lease_inputs(
    tx: Tx, container_id: str, lease_token: str, limit: int, ready: bool = True
) -> list[LeasedInput]:
    """Claim up to ``limit`` pending inputs for a live container (oldest first).

    ``ready=False``: the container could not load the function and only takes inputs to fail them, so
    it does not count as started (its exit counts towards the function's start failures)."""
    row = tx.fetchone(
        "SELECT c.function_id, c.state, c.lease_token, f.spec, c.held FROM containers c "
        "JOIN functions f ON f.id = c.function_id WHERE c.id = ?",
        (container_id,),
    )
    if row is None:
        raise NotFound(f"container {container_id} does not exist")
    function_id, state, token, spec_json, held = row
    if token != lease_token or state not in ("assigned", "running"):
        raise Gone(f"container {container_id} no longer holds a lease ({state})")
    if ready and tx.execute(
        "UPDATE containers SET ready_at = ? WHERE id = ? AND ready_at IS NULL", (tx.now, container_id)
    ):
        # this container started: the function's run of failed starts is over
        tx.execute("UPDATE functions SET start_failures = 0 WHERE id = ?", (function_id,))
        _say_ready(tx, container_id)
    spec = json.loads(spec_json)
    timeout = float(spec["timeout"])
    if spec.get("max_inputs", 1) > 1:
        # @concurrent: up to target_inputs at once; beyond that (up to max_inputs) only inputs that no
        # container below its target has taken within BURST_AFTER, so load spreads over the
        # containers the autoscaler started for it and bursts only while they are still starting
        below = max(0, min(limit, int(spec.get("target_inputs", 1)) - int(held)))
        rows = _lease(tx, container_id, lease_token, function_id, timeout, tx.now, below) if below else []
        if limit > len(rows):
            rows += _lease(
                tx, container_id, lease_token, function_id, timeout, tx.now - BURST_AFTER, limit - len(rows)
            )
    else:
        rows = _lease(tx, container_id, lease_token, function_id, timeout, tx.now, limit)
    if rows:
        n = len(rows)
        tx.execute(
            "UPDATE functions SET backlog = backlog - ?, running = running + ? WHERE id = ?",
            (n, n, function_id),
        )
        metering.held_changed(tx, container_id, n, ", state = 'running'")
    out = [LeasedInput(int(r[0]), r[1], int(r[2]), int(r[3]), _b(r[4]), r[5]) for r in rows]
    out.sort(key=lambda i: i.seq)
    return out


def _lease(
    tx: Tx,
    container_id: str,
    lease_token: str,
    function_id: str,
    timeout: float,
    queued_before: float,
    limit: int,
) -> list[Any]:
    """Lease up to ``limit`` pending inputs queued no later than ``queued_before`` (oldest first)."""
    return tx.fetchall(
        "UPDATE inputs SET state = 'leased', container_id = ?, lease_token = ?, leased_at = ?, deadline = ? "
        "WHERE seq IN (SELECT seq FROM inputs WHERE function_id = ? AND state = 'pending' AND not_before <= ? "
        f"AND created_at <= ? ORDER BY seq LIMIT ?{tx.dialect.skip_locked}) "
        "RETURNING seq, call_id, idx, attempt, args, args_ref",
        (container_id, lease_token, tx.now, tx.now + timeout, function_id, tx.now, queued_before, limit),
    )


def _b(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def put_outputs(tx: Tx, container_id: str, lease_token: str, outputs: list[OutputIn]) -> OutputsResult:
    result = OutputsResult(0, 0, set(), set())
    for out in outputs:
        row = tx.fetchone(
            "SELECT state, container_id, lease_token, call_id, idx, attempt, function_id, items, sys_failures "
            "FROM inputs WHERE seq = ?",
            (out.seq,),
        )
        if row is None or row[0] != "leased" or row[1] != container_id or row[2] != lease_token:
            result.rejected += 1
            continue
        _, _, _, call_id, idx, attempt, function_id, items, sys_failures = row
        result.accepted += 1
        result.calls.add(call_id)
        if out.part != FINAL:
            inserted = tx.execute(
                "INSERT INTO outputs (call_id, idx, part, input_seq, status, data, data_ref, error, duration, "
                "created_at) VALUES (?, ?, ?, ?, 'item', ?, ?, NULL, NULL, ?) "
                "ON CONFLICT (call_id, idx, part) DO NOTHING",
                (call_id, idx, out.part, out.seq, out.data, out.data_ref, tx.now),
            )
            if inserted:
                tx.execute("UPDATE inputs SET items = items + 1 WHERE seq = ?", (out.seq,))
            continue
        retry = RetryDecision(False, 0.0)
        if out.status in (OutputStatus.FAILURE.value, OutputStatus.TIMEOUT.value) and items == 0:
            retry = decide_retry(_spec(tx, function_id).retries, attempt - sys_failures)
        if retry.retry:
            why = f"it failed ({_error_type(out.error) or out.status})"
            _requeue(tx, out.seq, function_id, container_id, delay=retry.delay, system=False, why=why)
            result.requeued_functions.add(function_id)
        else:
            _finish(tx, out.seq, call_id, idx, function_id, container_id, out)
    if result.rejected and not result.accepted:
        live = tx.fetchone("SELECT state, lease_token FROM containers WHERE id = ?", (container_id,))
        if live is None or live[1] != lease_token or live[0] not in ("assigned", "running"):
            raise Gone(f"container {container_id} no longer holds a lease; its outputs were not stored")
    return result


def _error_type(error: str | None) -> str | None:
    """The exception type a failed output names (its error is JSON with a ``type``), if any."""
    try:
        kind = json.loads(error or "").get("type")
    except (ValueError, AttributeError):
        return None
    return str(kind) if kind else None


def _spec(tx: Tx, function_id: str) -> FunctionSpec:
    raw = tx.scalar("SELECT spec FROM functions WHERE id = ?", (function_id,))
    return FunctionSpec.from_dict(json.loads(raw))


def _finish(
    tx: Tx, seq: int, call_id: str, idx: int, function_id: str, container_id: str | None, out: OutputIn
) -> None:
    tx.execute(
        "INSERT INTO outputs (call_id, idx, part, input_seq, status, data, data_ref, error, duration, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_id, idx, part) DO NOTHING",
        (call_id, idx, FINAL, seq, out.status, out.data, out.data_ref, out.error, out.duration, tx.now),
    )
    tx.execute(
        "UPDATE inputs SET state = 'done', args = NULL, container_id = NULL, lease_token = NULL WHERE seq = ?",
        (seq,),
    )
    tx.execute("UPDATE functions SET running = running - 1 WHERE id = ?", (function_id,))
    if container_id is None or not metering.ON_CALL_PATH:
        tx.execute("UPDATE calls SET outputs_done = outputs_done + 1 WHERE id = ?", (call_id,))
        if container_id is not None:
            metering.held_changed(tx, container_id, -1, ", served = served + 1")
        return
    # the call's cost: its inputs' run time at their containers' rates
    seconds = max(0.0, float(out.duration or 0.0))
    tx.execute(
        "UPDATE calls SET outputs_done = outputs_done + 1, busy_s = busy_s + ?, "
        "cost = cost + ? * COALESCE((SELECT rate FROM containers WHERE id = ?), 0) WHERE id = ?",
        (seconds, seconds, container_id, call_id),
    )
    metering.held_changed(tx, container_id, -1, ", served = served + 1")


def _say_ready(tx: Tx, container_id: str) -> None:
    row = tx.fetchone("SELECT app_id, function_id, started_at FROM containers WHERE id = ?", (container_id,))
    if row is None:
        return
    app_id, function_id, started = row
    took = "" if started is None else f" {tx.now - float(started):.2f} s after it was up (imports and @enter)"
    logs.system(tx, app_id, f"container {container_id} ready{took}", stream="platform",
                function_id=function_id, container_id=container_id)  # fmt: skip


def _requeue(
    tx: Tx, seq: int, function_id: str, container_id: str | None, *, delay: float, system: bool, why: str
) -> None:
    row = tx.fetchone("SELECT call_id, idx, attempt FROM inputs WHERE seq = ?", (seq,))
    app_id = tx.scalar("SELECT app_id FROM functions WHERE id = ?", (function_id,))
    if row is not None and app_id is not None:
        call_id, idx, attempt = row
        after = f" in {delay:.1f} s" if delay > 0 else ""
        budget = "; not counted against its retries" if system else ""
        logs.system(
            tx,
            app_id,
            f"input {idx} of call {call_id} runs again{after} (attempt {int(attempt) + 1}): {why}{budget}",
            function_id=function_id,
            container_id=container_id,
            call_id=call_id,
            input_seq=seq,
        )
    tx.execute(
        "UPDATE inputs SET state = 'pending', attempt = attempt + 1, sys_failures = sys_failures + ?, "
        "not_before = ?, container_id = NULL, lease_token = NULL, leased_at = NULL, deadline = NULL "
        "WHERE seq = ?",
        (1 if system else 0, tx.now + delay, seq),
    )
    tx.execute(
        "UPDATE functions SET running = running - 1, backlog = backlog + 1 WHERE id = ?", (function_id,)
    )
    if container_id is not None:
        metering.held_changed(tx, container_id, -1)


def fail_input(
    tx: Tx, seq: int, status: OutputStatus, error: dict[str, str], *, retryable: bool
) -> str | None:
    """Fail a leased input from outside its container (timeout, container lost). Returns its call id."""
    row = tx.fetchone(
        "SELECT state, call_id, idx, attempt, function_id, container_id, items, sys_failures "
        "FROM inputs WHERE seq = ?",
        (seq,),
    )
    if row is None or row[0] != "leased":
        return None
    _, call_id, idx, attempt, function_id, container_id, items, sys_failures = row
    if items == 0:
        why = str(error.get("message") or error.get("type") or status.value)
        if status == OutputStatus.SYSTEM and sys_failures < MAX_SYSTEM_FAILURES:
            _requeue(tx, seq, function_id, container_id, delay=0.0, system=True, why=why)
            return None
        if retryable:
            retry = decide_retry(_spec(tx, function_id).retries, attempt - sys_failures)
            if retry.retry:
                _requeue(tx, seq, function_id, container_id, delay=retry.delay, system=False, why=why)
                return None
    out = OutputIn(seq, FINAL, status.value, None, None, json.dumps(error), None)
    _finish(tx, seq, call_id, idx, function_id, container_id, out)
    return str(call_id)


@dataclass
class OutputRow:
    id: int
    idx: int
    part: int
    status: str
    data: bytes | None
    data_ref: str | None
    error: str | None


@dataclass
class OutputPage:
    outputs: list[OutputRow]
    cursor: int
    total: int | None
    done: int
    cancelled: bool


def get_outputs(tx: Tx, call_id: str, cursor: int, limit: int) -> OutputPage:
    call = tx.fetchone("SELECT inputs_total, outputs_done, cancelled FROM calls WHERE id = ?", (call_id,))
    if call is None:
        raise NotFound(f"function call {call_id} does not exist")
    rows = tx.fetchall(
        "SELECT id, idx, part, status, data, data_ref, error FROM outputs WHERE call_id = ? AND id > ? "
        "ORDER BY id LIMIT ?",
        (call_id, cursor, limit),
    )
    outs = [OutputRow(int(r[0]), int(r[1]), int(r[2]), r[3], _b(r[4]), r[5], r[6]) for r in rows]
    new_cursor = outs[-1].id if outs else cursor
    total = None if call[0] is None else int(call[0])
    return OutputPage(outs, new_cursor, total, int(call[1]), bool(call[2]))


def cancel_call(tx: Tx, call_id: str, terminate_containers: bool) -> tuple[set[str], dict[str, list[int]]]:
    """Cancel every unfinished input of a call. Returns containers to stop and inputs to interrupt."""
    if tx.fetchone("SELECT 1 FROM calls WHERE id = ?", (call_id,)) is None:
        raise NotFound(f"function call {call_id} does not exist")
    tx.execute("UPDATE calls SET cancelled = 1 WHERE id = ?", (call_id,))
    rows = tx.fetchall(
        "SELECT seq, idx, state, function_id, container_id FROM inputs WHERE call_id = ? AND state <> 'done'",
        (call_id,),
    )
    stop: set[str] = set()
    interrupt: dict[str, list[int]] = {}
    err = json.dumps({"type": "InputCancellation", "message": "the function call was cancelled"})
    for seq, idx, state, function_id, container_id in rows:
        if state == "pending":
            tx.execute(
                "UPDATE functions SET backlog = backlog - 1, running = running + 1 WHERE id = ?",
                (function_id,),
            )
        else:
            (
                stop.add(container_id)
                if terminate_containers
                else interrupt.setdefault(container_id, []).append(seq)
            )
        out = OutputIn(seq, FINAL, OutputStatus.CANCELLED.value, None, None, err, None)
        _finish(tx, seq, call_id, idx, function_id, container_id if state == "leased" else None, out)
    return stop, interrupt


def expired_inputs(tx: Tx, limit: int = 500) -> list[tuple[int, str]]:
    rows = tx.fetchall(
        "SELECT seq, container_id FROM inputs WHERE state = 'leased' AND deadline < ? ORDER BY deadline LIMIT ?",
        (tx.now, limit),
    )
    return [(int(r[0]), str(r[1])) for r in rows]


def function_stats(tx: Tx, function_id: str) -> dict[str, int]:
    row = tx.fetchone("SELECT backlog, running FROM functions WHERE id = ?", (function_id,))
    if row is None:
        raise NotFound(f"function {function_id} does not exist")
    live = tx.scalar(
        "SELECT COUNT(*) FROM containers WHERE function_id = ? AND state <> 'stopped'", (function_id,)
    )
    return {"backlog": int(row[0]), "running_inputs": int(row[1]), "num_total_runners": int(live)}


def release_unheld(tx: Tx, container_id: str, lease_token: str, held: set[int]) -> set[str]:
    """Requeue inputs leased to a container that says it does not hold them (a lease response was lost)."""
    calls_touched: set[str] = set()
    rows = tx.fetchall(
        "SELECT seq FROM inputs WHERE container_id = ? AND lease_token = ? AND state = 'leased'",
        (container_id, lease_token),
    )
    err = {"type": "LeaseLost", "message": "the lease never reached the container"}
    for (seq,) in rows:
        if int(seq) not in held:
            call = fail_input(tx, int(seq), OutputStatus.SYSTEM, err, retryable=False)
            if call:
                calls_touched.add(call)
    return calls_touched


def fail_pending(tx: Tx, function_id: str, message: str, kind: str = "ExecutionError") -> set[str]:
    """Give every pending input of a function a final system-failure output."""
    err = json.dumps({"type": kind, "message": message})
    touched: set[str] = set()
    for seq, call_id, idx in tx.fetchall(
        "SELECT seq, call_id, idx FROM inputs WHERE function_id = ? AND state = 'pending'", (function_id,)
    ):
        tx.execute(
            "UPDATE functions SET backlog = backlog - 1, running = running + 1 WHERE id = ?", (function_id,)
        )
        _finish(
            tx,
            int(seq),
            call_id,
            int(idx),
            function_id,
            None,
            OutputIn(int(seq), FINAL, OutputStatus.SYSTEM.value, None, None, err, None),
        )
        touched.add(call_id)
    return touched
