"""Metering (ADR 0015): what each container used and cost, per second, on the store's clock.

A container is billed from the moment its process was up (``started_at``) to the moment it stopped
(``stopped_at``; while it runs, now) for what it reserved (cores, memory, GPUs), at its worker pool's unit
prices as they were when it was placed. Its billed time splits into cold start (up → ``@enter`` done),
busy (holding at least one input) and idle-warm (the rest). Before it was up it is not billed; its
earlier phases (scheduled → assigned → image ready) are timing only.
"""

from __future__ import annotations

import calendar
import json
import math
import os
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vivace.protocol.calls import FINAL
from vivace.protocol.functions import GPU_TYPE
from vivace.protocol.usage import DEFAULT_POOL, POOL_NAME
from vivace.server.store.base import Tx

MAX_PRICE = 1000.0  # per unit-second: a typo guard (a GPU-second at $1,000 is $3.6M an hour)


class PriceError(ValueError):
    """A price table that cannot be used, saying where and why."""


@dataclass(frozen=True)
class Prices:
    """Unit prices per second: a reserved core, a reserved GiB of memory, a GPU of each type."""

    cpu_core_second: float = 0.0
    memory_gib_second: float = 0.0
    gpu_second: dict[str, float] = field(default_factory=dict)

    def rates(self, cpu: float, memory_mib: int, gpu_type: str | None, gpu_count: int) -> dict[str, float]:
        """Cost per second of a reservation, by resource."""
        gpu = self.gpu_second.get(gpu_type or "", 0.0) * gpu_count if gpu_count else 0.0
        return {
            "cpu": cpu * self.cpu_core_second,
            "memory": memory_mib / 1024 * self.memory_gib_second,
            "gpu": gpu,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu_core_second": self.cpu_core_second,
            "memory_gib_second": self.memory_gib_second,
            "gpu_second": dict(sorted(self.gpu_second.items())),
        }


def parse_prices(raw: Any, where: str) -> Prices:
    if not isinstance(raw, dict):
        raise PriceError(f"{where}: must be a table of prices")
    unknown = set(raw) - {"cpu_core_second", "memory_gib_second", "gpu_second"}
    if unknown:
        raise PriceError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
            "(known: cpu_core_second, memory_gib_second, gpu_second)"
        )
    gpus_raw = raw.get("gpu_second", {})
    if not isinstance(gpus_raw, dict):
        raise PriceError(f"{where}.gpu_second: must be a table of GPU type = price per GPU-second")
    gpus: dict[str, float] = {}
    for kind, value in gpus_raw.items():
        name = str(kind).strip().upper()
        if not GPU_TYPE.fullmatch(name):
            raise PriceError(f"{where}.gpu_second: {kind!r} is not a GPU type name (like H100 or A100-80GB)")
        gpus[name] = _price(value, f"{where}.gpu_second.{kind}")
    return Prices(
        _price(raw.get("cpu_core_second", 0.0), f"{where}.cpu_core_second"),
        _price(raw.get("memory_gib_second", 0.0), f"{where}.memory_gib_second"),
        gpus,
    )


def _price(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PriceError(f"{where}: must be a number (a price per second), got {value!r}")
    if not (math.isfinite(value) and 0 <= value <= MAX_PRICE):
        raise PriceError(f"{where}: must be between 0 and {MAX_PRICE:g} per second, got {value!r}")
    return float(value)


def load_pools(path: Path) -> dict[str, Prices]:
    """Read a pools file (TOML): ``[pools.NAME]`` tables of unit prices per second."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as err:
        raise PriceError(f"cannot read the pools file {path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise PriceError(f"{path} is not valid TOML: {err}") from None
    extra = set(doc) - {"pools"}
    if extra:
        raise PriceError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(extra))} (expected [pools.NAME])"
        )
    pools = doc.get("pools", {})
    if not isinstance(pools, dict):
        raise PriceError(f"{path}: 'pools' must be a table of [pools.NAME] tables")
    out = {}
    for name, raw in pools.items():
        if not POOL_NAME.fullmatch(name):
            raise PriceError(
                f"{path}: pool name {name!r} must be lowercase letters, digits, '.', '_' or '-' (at most 63)"
            )
        out[name] = parse_prices(raw, f"{path}: pools.{name}")
    return out


def set_pools(tx: Tx, pools: dict[str, Prices]) -> None:
    """Record pools' prices (containers placed from now on are billed at them; earlier ones keep theirs)."""
    for name, prices in pools.items():
        data = json.dumps(prices.to_json(), sort_keys=True)
        if (
            tx.execute("UPDATE pools SET prices = ?, updated_at = ? WHERE name = ?", (data, tx.now, name))
            == 0
        ):
            tx.execute("INSERT INTO pools (name, prices, updated_at) VALUES (?, ?, ?)", (name, data, tx.now))


def pool_prices(tx: Tx) -> dict[str, Prices]:
    return {
        name: parse_prices(json.loads(data), f"pool {name}")
        for name, data in tx.fetchall("SELECT name, prices FROM pools")
    }


def list_pools(tx: Tx) -> list[dict[str, Any]]:
    """Pools with prices and the live workers in each (a pool with workers but no prices costs 0)."""
    prices = {name: (p, at) for name, p, at in tx.fetchall("SELECT name, prices, updated_at FROM pools")}
    workers: dict[str, list[str]] = {}
    for wid, labels in tx.fetchall("SELECT id, labels FROM workers WHERE state = 'alive'"):
        workers.setdefault(pool_of(labels), []).append(wid)
    out = []
    for name in sorted(set(prices) | set(workers)):
        data, at = prices.get(name, (None, None))
        out.append(
            {
                "name": name,
                "prices": json.loads(data) if data else None,
                "updated_at": at,
                "workers": sorted(workers.get(name, [])),
            }
        )
    return out


def pool_of(labels_json: str | None) -> str:
    labels = json.loads(labels_json or "{}")
    return str(labels.get("pool") or DEFAULT_POOL)


def price_placements(tx: Tx, placed: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Record where each newly placed container runs and what it costs per second there.

    ``placed``: container → (worker, GPU indices)."""
    if not placed:
        return
    prices = pool_prices(tx)
    workers = {
        wid: (pool_of(labels), {int(g["index"]): str(g["type"]) for g in json.loads(gpus or "[]")})
        for wid, labels, gpus in tx.fetchall("SELECT id, labels, gpus FROM workers")
    }
    for cid, (wid, gpu_indices) in placed.items():
        pool, gpu_types = workers.get(wid, (DEFAULT_POOL, {}))
        p = prices.get(pool, Prices())
        gpu_type = gpu_types.get(gpu_indices[0]) if gpu_indices else None
        row = tx.fetchone("SELECT cpu, memory FROM containers WHERE id = ?", (cid,))
        if row is None:
            continue
        rate = sum(p.rates(float(row[0]), int(row[1]), gpu_type, len(gpu_indices)).values())
        tx.execute(
            "UPDATE containers SET pool = ?, gpu_type = ?, gpu_count = ?, prices = ?, rate = ? WHERE id = ?",
            (pool, gpu_type, len(gpu_indices), json.dumps(p.to_json(), sort_keys=True), rate, cid),
        )


# -- busy time ----------------------------------------------------------------------------------------
ON_CALL_PATH = os.environ.get("VIVACE_METERING", "1").strip().lower() not in ("0", "off", "false", "no")
"""Busy time and calls' costs are counted as inputs are leased and finished. ``VIVACE_METERING=0``
leaves them out (containers' lives and costs are still metered): the metering benchmark measures the
call path both ways."""


def held_changed(tx: Tx, container_id: str, delta: int, extra: str = "") -> None:
    """Add ``delta`` inputs to what a container holds, and count its busy time: a container is busy
    from when it goes from holding none to some until it holds none again. ``extra``: more SET terms."""
    if not ON_CALL_PATH:
        tx.execute(
            f"UPDATE containers SET held = CASE WHEN held + ? < 0 THEN 0 ELSE held + ? END, last_active_at = ?"
            f"{extra} WHERE id = ?",
            (delta, delta, tx.now, container_id),
        )
        return
    tx.execute(
        "UPDATE containers SET "
        "busy_s = busy_s + CASE WHEN held + ? <= 0 AND busy_since IS NOT NULL THEN ? - busy_since ELSE 0 END, "
        "busy_since = CASE WHEN held + ? <= 0 THEN NULL ELSE COALESCE(busy_since, ?) END, "
        f"held = CASE WHEN held + ? < 0 THEN 0 ELSE held + ? END, last_active_at = ?{extra} WHERE id = ?",
        (delta, tx.now, delta, tx.now, delta, delta, tx.now, container_id),
    )


# -- usage ----------------------------------------------------------------------------------------------
@dataclass
class Meter:
    """One container's metered life, clipped to a window."""

    container_id: str
    app_id: str
    app: str
    function: str
    pool: str
    gpu_type: str | None
    gpu_count: int
    cpu: float
    memory: int
    billed_s: float
    cold_s: float
    busy_s: float
    idle_s: float
    cost: dict[str, float]
    start: float
    end: float

    @property
    def total(self) -> float:
        return sum(self.cost.values())


METER_COLUMNS = (
    "c.id, c.app_id, a.name, f.name, c.pool, c.gpu_type, c.gpu_count, c.cpu, c.memory, c.started_at, "
    "c.ready_at, c.stopped_at, c.busy_s, c.busy_since, c.prices"
)


def meter_row(row: Iterable[Any], now: float, since: float = 0.0, until: float = math.inf) -> Meter | None:
    """A container's meter from its row (``METER_COLUMNS``), clipped to ``[since, until)``; None when
    it was not up within the window.

    Cold start is clipped exactly (it is an interval); when the window cuts the rest of a container's
    life, its busy and idle seconds are shared out in proportion."""
    (cid, app_id, app, fn, pool, gpu_type, gpu_count, cpu, memory, started, ready, stopped, busy, busy_since,
     prices_json) = row  # fmt: skip
    if started is None:
        return None
    started = float(started)
    end_all = max(started, float(stopped) if stopped is not None else now)
    start, end = max(started, since), min(end_all, until)
    if end < start or (end == start and start != started):
        return None
    billed = max(0.0, end - start)
    ready_at = min(float(ready) if ready is not None else end_all, end_all)
    cold = max(0.0, min(ready_at, end) - start)
    busy_total = float(busy) + (max(0.0, end_all - float(busy_since)) if busy_since is not None else 0.0)
    warm_total = max(0.0, end_all - ready_at)  # the life after the cold start, whole
    warm_here = max(0.0, billed - cold)
    share = warm_here / warm_total if warm_total > 0 else 0.0
    busy_here = min(warm_here, busy_total * share)
    p = parse_prices(json.loads(prices_json), "container prices") if prices_json else Prices()
    rates = p.rates(float(cpu), int(memory), gpu_type, int(gpu_count or 0))
    return Meter(
        cid, app_id, app or app_id, fn, pool or DEFAULT_POOL, gpu_type, int(gpu_count or 0), float(cpu),
        int(memory), billed, cold, busy_here, max(0.0, warm_here - busy_here),
        {k: v * billed for k, v in rates.items()}, start, end,
    )  # fmt: skip


def meters(
    tx: Tx, since: float = 0.0, until: float = math.inf, *, app: str | None = None,
    container_id: str | None = None,
) -> list[Meter]:  # fmt: skip
    """Containers up within ``[since, until)``; ``app``: an app's name (every run and deploy of it) or id."""
    where = ["c.started_at IS NOT NULL", "c.started_at < ?", "(c.stopped_at IS NULL OR c.stopped_at >= ?)"]
    params: list[Any] = [until if math.isfinite(until) else 1e18, since]
    if app:
        where.append("(a.name = ? OR a.id = ?)")
        params += [app, app]
    if container_id:
        where.append("c.id = ?")
        params.append(container_id)
    rows = tx.fetchall(
        f"SELECT {METER_COLUMNS} FROM containers c JOIN functions f ON f.id = c.function_id "
        f"JOIN apps a ON a.id = c.app_id WHERE {' AND '.join(where)}",
        params,
    )
    return [m for m in (meter_row(r, tx.now, since, until) for r in rows) if m is not None]


def usage(
    tx: Tx, since: float, until: float, by: tuple[str, ...], app: str | None = None
) -> list[dict[str, Any]]:
    """Usage and cost in ``[since, until)`` grouped by ``by`` (``GROUPS``; none: one total row); a
    container that spans UTC days is split exactly between them."""
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for m in meters(tx, since, until, app=app):
        pieces = _split_days(m) if "day" in by else [(None, m)]
        for day, piece in pieces:
            key = tuple(_group_value(piece, g, day) for g in by)
            g = groups.get(key)
            if g is None:
                g = groups[key] = {
                    **dict(zip(by, key, strict=True)), "containers": 0, "billed_s": 0.0, "cold_s": 0.0,
                    "busy_s": 0.0, "idle_s": 0.0, "core_s": 0.0, "gib_s": 0.0, "gpu_s": 0.0,
                    "cost_cpu": 0.0, "cost_memory": 0.0, "cost_gpu": 0.0, "cost": 0.0,
                }  # fmt: skip
            g["containers"] += 1
            for k in ("billed_s", "cold_s", "busy_s", "idle_s"):
                g[k] += getattr(piece, k)
            g["core_s"] += piece.cpu * piece.billed_s
            g["gib_s"] += piece.memory / 1024 * piece.billed_s
            g["gpu_s"] += piece.gpu_count * piece.billed_s
            for k, v in piece.cost.items():
                g[f"cost_{k}"] += v
            g["cost"] += piece.total
    return sorted(groups.values(), key=lambda g: (-g["cost"], tuple(str(g[k]) for k in by)))


def _group_value(m: Meter, group: str, day: str | None) -> str:
    if group == "app":
        return m.app
    if group == "function":
        return f"{m.app}.{m.function}"
    if group == "gpu":
        return m.gpu_type or "none"
    if group == "pool":
        return m.pool
    if group == "container":
        return m.container_id
    return day or ""


def _split_days(m: Meter) -> list[tuple[str, Meter]]:
    out = []
    t = m.start
    while True:
        day = time.strftime("%Y-%m-%d", time.gmtime(t))
        next_day = calendar.timegm(time.strptime(day, "%Y-%m-%d")) + 86400.0
        end = min(m.end, next_day)
        f = (end - t) / m.billed_s if m.billed_s > 0 else 1.0
        cold = max(0.0, min(m.cold_s - (t - m.start), end - t))  # the cold start comes first
        warm = max(0.0, (end - t) - cold)
        warm_all = m.busy_s + m.idle_s
        busy = m.busy_s * warm / warm_all if warm_all > 0 else 0.0
        piece = Meter(
            m.container_id, m.app_id, m.app, m.function, m.pool, m.gpu_type, m.gpu_count, m.cpu, m.memory,
            end - t, cold, busy, warm - busy, {k: v * f for k, v in m.cost.items()}, t, end,
        )  # fmt: skip
        out.append((day, piece))
        if end >= m.end:
            return out
        t = end


# -- spend limits -------------------------------------------------------------------------------------
WORKSPACE = "*"


def period_start(period: str, now: float) -> float:
    t = time.gmtime(now)
    if period == "day":
        return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)))
    if period == "month":
        return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))
    return 0.0


def set_limit(tx: Tx, scope: str, amount: float, period: str) -> None:
    if (
        tx.execute("UPDATE spend_limits SET amount = ?, period = ? WHERE scope = ?", (amount, period, scope))
        == 0
    ):
        tx.execute(
            "INSERT INTO spend_limits (scope, amount, period, created_at) VALUES (?, ?, ?, ?)",
            (scope, amount, period, tx.now),
        )


def remove_limit(tx: Tx, scope: str) -> bool:
    return tx.execute("DELETE FROM spend_limits WHERE scope = ?", (scope,)) > 0


def limits(tx: Tx) -> list[dict[str, Any]]:
    """Every spend limit with what its scope has spent in its period so far."""
    out = []
    for scope, amount, period in tx.fetchall("SELECT scope, amount, period FROM spend_limits ORDER BY scope"):
        since = period_start(period, tx.now)
        app = None if scope == WORKSPACE else scope.removeprefix("app:")
        spent = sum(m.total for m in meters(tx, since) if app is None or m.app == app)
        out.append(
            {
                "scope": "workspace" if app is None else "app",
                "app": app,
                "amount": float(amount),
                "period": period,
                "since": since,
                "spent": spent,
                "reached": spent >= float(amount),
            }
        )
    return out


def reached(tx: Tx) -> dict[str, str]:
    """Spend limits that are reached, as scope → why: ``WORKSPACE`` for the workspace's, else the app's
    name (it holds every run and deploy of that name, those that start later too)."""
    out: dict[str, str] = {}
    for lim in limits(tx):
        if not lim["reached"]:
            continue
        who = "the workspace" if lim["app"] is None else f"app {lim['app']!r}"
        when = {"day": " today", "month": " this month", "total": ""}[lim["period"]]
        out[WORKSPACE if lim["app"] is None else lim["app"]] = (
            f"{who} reached its spend limit: {lim['spent']:.4f} spent{when} of {lim['amount']:.4f} "
            "(`vivace usage limits` shows it; `vivace usage limit set` raises it)"
        )
    return out


def why_blocked(blocked: dict[str, str], app_name: str | None) -> str | None:
    """Why an app may start no container (``blocked``: from :func:`reached`), or None."""
    if app_name is not None and app_name in blocked:
        return blocked[app_name]
    return blocked.get(WORKSPACE)


# -- one container, one call ------------------------------------------------------------------------
PHASES = ("created_at", "assigned_at", "image_ready_at", "started_at", "ready_at", "stopped_at")


def describe_container(tx: Tx, container_id: str) -> dict[str, Any]:
    """A container's phases (store clock), its meter so far and what the kernel counted."""
    row = tx.fetchone(
        f"SELECT {', '.join(PHASES)}, pool, gpu_type, gpu_count, rate, cpu_used_s, memory_peak, cpu, memory "
        "FROM containers WHERE id = ?",
        (container_id,),
    )
    if row is None:
        return {}
    phases = dict(zip(PHASES, row[: len(PHASES)], strict=True))
    pool, gpu_type, gpu_count, rate, cpu_used, peak, cpu, memory = row[len(PHASES) :]
    found = meters(tx, container_id=container_id)
    m = found[0] if found else None
    return {
        "phases": phases,
        "pool": pool,
        "gpu_type": gpu_type,
        "gpu_count": int(gpu_count or 0),
        "reserved": {"cpu": float(cpu), "memory_mib": int(memory)},
        "rate_per_s": float(rate or 0.0),
        "billed_s": m.billed_s if m else 0.0,
        "cold_s": m.cold_s if m else 0.0,
        "busy_s": m.busy_s if m else 0.0,
        "idle_s": m.idle_s if m else 0.0,
        "cost": m.total if m else 0.0,
        "cpu_used_s": cpu_used,
        "memory_peak": peak,
    }


def describe_call(tx: Tx, call_id: str) -> dict[str, Any] | None:
    row = tx.fetchone(
        "SELECT c.function_id, f.name, a.name, f.app_id, c.kind, c.created_at, c.inputs_total, "
        "c.inputs_added, c.outputs_done, c.cancelled, c.busy_s, c.cost FROM calls c "
        "JOIN functions f ON f.id = c.function_id JOIN apps a ON a.id = f.app_id WHERE c.id = ?",
        (call_id,),
    )
    if row is None:
        return None
    keys = ("function_id", "function", "app", "app_id", "kind", "created_at", "inputs_total", "inputs_added",
            "outputs_done", "cancelled", "busy_s", "cost")  # fmt: skip
    out = dict(zip(keys, row, strict=True))
    out["call_id"] = call_id
    out["cancelled"] = bool(out["cancelled"])
    out["inputs"] = {
        str(state): int(n)
        for state, n in tx.fetchall(
            "SELECT state, COUNT(*) FROM inputs WHERE call_id = ? GROUP BY state", (call_id,)
        )
    }
    out["retried_inputs"] = int(
        tx.scalar("SELECT COUNT(*) FROM inputs WHERE call_id = ? AND attempt > 1", (call_id,)) or 0
    )
    return out


def list_calls(
    tx: Tx, *, app: str | None = None, limit: int = 100, before: float | None = None
) -> list[dict[str, Any]]:
    """Recent calls, newest first: inputs done of total, failures, retried inputs, first error, duration
    (to the last final output, or to now while running) and cost. ``app``: its name or id."""
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    if app:
        where.append("(a.name = ? OR a.id = ?)")
        params += [app, app]
    if before is not None:
        where.append("c.created_at < ?")
        params.append(before)
    rows = tx.fetchall(
        "SELECT c.id, COALESCE(a.name, a.id), f.name, c.kind, c.created_at, c.inputs_total, c.inputs_added, "
        "c.outputs_done, c.cancelled, c.busy_s, c.cost FROM calls c JOIN functions f ON f.id = c.function_id "
        f"JOIN apps a ON a.id = f.app_id WHERE {' AND '.join(where)} ORDER BY c.created_at DESC LIMIT ?",
        (*params, limit),
    )
    out = []
    for cid, app_name, fn, kind, created, total, added, done, cancelled, busy, cost in rows:
        agg = tx.fetchone(
            "SELECT COUNT(*), MAX(created_at) FROM outputs WHERE call_id = ? AND part = ? AND status <> 'success'",
            (cid, FINAL),
        )
        last = tx.scalar("SELECT MAX(created_at) FROM outputs WHERE call_id = ? AND part = ?", (cid, FINAL))
        err = tx.scalar(
            "SELECT error FROM outputs WHERE call_id = ? AND part = ? AND status <> 'success' ORDER BY id LIMIT 1",
            (cid, FINAL),
        )
        retried = tx.scalar("SELECT COUNT(*) FROM inputs WHERE call_id = ? AND attempt > 1", (cid,))
        expected = int(total if total is not None else added)
        finished = total is not None and int(done) >= expected
        failures = int(agg[0]) if agg else 0
        status = (
            "cancelled" if cancelled else ("running" if not finished else ("failed" if failures else "done"))
        )
        end = float(last) if finished and last is not None else tx.now
        out.append({
            "call_id": cid, "app": app_name, "function": fn, "kind": kind, "created_at": float(created),
            "inputs": expected, "done": int(done), "failures": failures, "retried": int(retried or 0),
            "status": status, "duration_s": max(0.0, end - float(created)), "busy_s": float(busy),
            "cost": float(cost), "error": _error_text(err),
        })  # fmt: skip
    return out


def _error_text(raw: Any) -> str | None:
    if raw is None:
        return None
    try:
        e = json.loads(raw)
    except ValueError:
        return str(raw)[:500]
    if isinstance(e, dict):
        return f"{e.get('type', 'Error')}: {e.get('message', '')}"[:500]
    return str(e)[:500]
