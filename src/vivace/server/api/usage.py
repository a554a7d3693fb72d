"""Metering routes (ADR 0015): usage and cost, worker pools' prices, spend limits, one call's cost."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vivace.protocol.usage import GROUPS, PERIODS
from vivace.server.api.common import field, json_body, plane_of, query_float, route
from vivace.server.errors import Invalid, NotFound
from vivace.server.services import metering

MAX_AMOUNT = 1e12
APP_NAME_MAX = 128


@route()
async def get_usage(request: Request) -> Response:
    """Usage and cost in ``[since, until)`` (epoch seconds; default: this month so far), grouped by
    ``by`` (comma-separated: app, function, gpu, pool, day, container), for one ``app`` or all."""
    plane = plane_of(request)
    now = await plane.store.read(lambda tx: tx.now)
    since = query_float(request, "since", metering.period_start("month", now), 0.0, 1e11)
    until = query_float(request, "until", math.inf, 0.0, math.inf)
    if until <= since:
        raise Invalid("'until' must be after 'since'")
    raw = request.query_params.get("by", "app")
    by = tuple(g for g in (p.strip() for p in raw.split(",")) if g)
    bad = [g for g in by if g not in GROUPS]
    if bad or len(set(by)) != len(by):
        raise Invalid(f"'by' takes distinct groups among {', '.join(GROUPS)}; got {raw!r}")
    app = request.query_params.get("app") or None
    rows = await plane.store.read(lambda tx: metering.usage(tx, since, until, by, app))
    total = await plane.store.read(lambda tx: metering.usage(tx, since, until, (), app))
    return JSONResponse(
        {
            "since": since,
            "until": None if math.isinf(until) else until,
            "now": now,
            "by": list(by),
            "app": app,
            "rows": rows,
            "total": total[0] if total else None,
        }
    )


@route()
async def list_pools(request: Request) -> Response:
    return JSONResponse({"pools": await plane_of(request).store.read(metering.list_pools)})


@route()
async def list_limits(request: Request) -> Response:
    return JSONResponse({"limits": await plane_of(request).store.read(metering.limits)})


def _scope(app: Any) -> str:
    if app is None:
        return metering.WORKSPACE
    if not isinstance(app, str) or not 0 < len(app) <= APP_NAME_MAX or app.startswith("ap-"):
        raise Invalid(f"'app' must be an app's name (1-{APP_NAME_MAX} characters), got {app!r}")
    return f"app:{app}"


@route()
async def set_limit(request: Request) -> Response:
    """Set (or change) the spend limit of the workspace (no ``app``) or of an app by name."""
    body = await json_body(request)
    scope = _scope(field(body, "app", str, None, optional=True))
    amount = float(field(body, "amount", (int, float)))
    period = field(body, "period", str, "month")
    if not (math.isfinite(amount) and 0 <= amount <= MAX_AMOUNT):
        raise Invalid(f"'amount' must be a number from 0 to {MAX_AMOUNT:g}, got {amount!r}")
    if period not in PERIODS:
        raise Invalid(f"'period' must be one of {', '.join(PERIODS)}, got {period!r}")
    plane = plane_of(request)
    await plane.store.write(lambda tx: metering.set_limit(tx, scope, amount, period))
    plane.spend_checked_at = 0.0  # the autoscaler looks again at its next tick
    plane.notifier.wake("autoscale")
    return JSONResponse({"limits": await plane.store.read(metering.limits)})


@route()
async def remove_limit(request: Request) -> Response:
    app = request.query_params.get("app")
    scope = _scope(app)
    plane = plane_of(request)
    if not await plane.store.write(lambda tx: metering.remove_limit(tx, scope)):
        raise NotFound(f"{'app ' + repr(app) if app else 'the workspace'} has no spend limit")
    plane.spend_checked_at = 0.0
    plane.notifier.wake("autoscale")
    return JSONResponse({"limits": await plane.store.read(metering.limits)})


@route()
async def call_usage(request: Request) -> Response:
    call_id = request.path_params["call_id"]
    info = await plane_of(request).store.read(lambda tx: metering.describe_call(tx, call_id))
    if info is None:
        raise NotFound(f"call {call_id} does not exist (or was a web request, which is not kept)")
    return JSONResponse(info)
