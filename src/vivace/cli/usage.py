"""``vivace usage`` (cost by app, function, GPU type, pool, day), its spend limits, one call's cost, and
``vivace pool list`` (pools' prices)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from vivace.cli.apps import _api, _ts
from vivace.cli.main import echo_table
from vivace.cli.times import parse_when
from vivace.protocol.usage import GROUPS, PERIODS


def money(v: Any) -> str:
    v = float(v or 0.0)
    return f"{v:.4f}" if v < 100 else f"{v:,.2f}"


def _whole(v: Any) -> str:
    return f"{float(v or 0):,.0f}"


def seconds(v: Any) -> str:
    v = float(v or 0.0)
    if v < 120:
        return f"{v:.1f} s"
    if v < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.2f} h"


@click.group(invoke_without_command=True)
@click.option("--since", default="month", show_default=True, help="From: 7d, 12h, today, month, 2026-11-01.")
@click.option("--until", default=None, help="Up to (default: now), in the same forms.")
@click.option(
    "--by",
    default="app",
    show_default=True,
    help=f"Group by one or more of {', '.join(GROUPS)} (comma-separated).",
)
@click.option("--app", "app_name", default=None, help="Only this app (its name: every run and deploy of it).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_context
def usage(
    ctx: click.Context, since: str, until: str | None, by: str, app_name: str | None, as_json: bool
) -> None:
    """What containers used and cost: billed seconds (cold start, busy, idle), reserved core-, GiB- and
    GPU-seconds, and cost at each worker pool's prices."""
    if ctx.invoked_subcommand is not None:
        return
    groups = [g.strip() for g in by.split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise click.BadParameter(f"choose among {', '.join(GROUPS)}", param_hint="--by")
    params: dict[str, Any] = {"since": parse_when(since), "by": ",".join(groups)}
    if until:
        params["until"] = parse_when(until)
    if app_name:
        params["app"] = app_name
    res = _api("GET", "/v1/usage", params=params)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    end = res["until"] or res["now"]
    click.echo(f"Usage from {_ts(res['since'])} to {_ts(end)}" + (f" for app {app_name}" if app_name else ""))
    rows = res["rows"]
    if not rows:
        click.echo("No container ran in this window.")
        return
    total = dict(res["total"] or {})
    total.update({g: "" for g in groups})
    total[groups[0]] = "total"
    cols = [*groups, "containers", "billed_s", "cold_s", "busy_s", "idle_s", "core_s", "gpu_s", "cost"]
    fmt: dict[str, Callable[[Any], str]] = {k: seconds for k in ("billed_s", "cold_s", "busy_s", "idle_s")}
    fmt.update({"core_s": _whole, "gpu_s": _whole, "cost": money})
    echo_table([*rows, total], cols, fmt)
    if float(total.get("billed_s") or 0) > 0 and not float(total.get("cost") or 0):
        click.echo(
            "Costs are 0: no worker pool has prices. Give them in pools.toml (vivace server --pools FILE); "
            "see docs/metering.md.",
            err=True,
        )


@usage.command("call")
@click.argument("call_id")
def usage_call(call_id: str) -> None:
    """One call: its inputs, their run time and their cost at their containers' prices."""
    r = _api("GET", f"/v1/calls/{call_id}/usage")
    click.echo(
        f"Call {r['call_id']} of {r['app']}.{r['function']} ({r['kind']}), made {_ts(r['created_at'])}"
    )
    inputs = ", ".join(f"{n} {state}" for state, n in sorted(r["inputs"].items())) or "none"
    click.echo(
        f"  inputs: {inputs}; retried: {r['retried_inputs']}; cancelled: {'yes' if r['cancelled'] else 'no'}"
    )
    click.echo(f"  run time: {seconds(r['busy_s'])}; cost: {money(r['cost'])}")


@usage.command("limits")
def usage_limits() -> None:
    """Spend limits and what each has spent in its period."""
    rows = _api("GET", "/v1/spend-limits")["limits"]
    if not rows:
        click.echo("No spend limits. Set one with `vivace usage limit set AMOUNT [--app NAME]`.")
        return
    for r in rows:
        r["scope"] = "workspace" if r["app"] is None else f"app {r['app']}"
        r["state"] = "REACHED: no new containers" if r["reached"] else "ok"
    echo_table(rows, ["scope", "period", "amount", "spent", "state"], {"amount": money, "spent": money})


@usage.group("limit")
def usage_limit() -> None:
    """Set or remove a spend limit: once reached, no new container starts (running ones finish)."""


@usage_limit.command("set")
@click.argument("amount", type=click.FloatRange(min=0))
@click.option("--app", "app_name", default=None, help="An app's name (default: the whole workspace).")
@click.option("--period", type=click.Choice(PERIODS), default="month", show_default=True)
def limit_set(amount: float, app_name: str | None, period: str) -> None:
    _api("PUT", "/v1/spend-limits", json_body={"app": app_name, "amount": amount, "period": period})
    who = f"app {app_name}" if app_name else "the workspace"
    click.echo(f"Spend limit of {who}: {money(amount)} per {period}" if period != "total" else
               f"Spend limit of {who}: {money(amount)} in total")  # fmt: skip


@usage_limit.command("remove")
@click.option("--app", "app_name", default=None, help="An app's name (default: the whole workspace).")
def limit_remove(app_name: str | None) -> None:
    _api("DELETE", "/v1/spend-limits", params={"app": app_name} if app_name else {})
    click.echo(f"Removed the spend limit of {'app ' + app_name if app_name else 'the workspace'}")


@click.group("pool")
def pool() -> None:
    """Worker pools: their prices and workers."""


@pool.command("list")
def pool_list() -> None:
    rows = _api("GET", "/v1/pools")["pools"]
    for r in rows:
        p = r["prices"] or {}
        r["core_s"] = p.get("cpu_core_second", "not set")
        r["gib_s"] = p.get("memory_gib_second", "not set")
        r["gpu_s"] = ", ".join(f"{k} {v}" for k, v in (p.get("gpu_second") or {}).items())
        r["workers"] = len(r["workers"])
    echo_table(rows, ["name", "workers", "core_s", "gib_s", "gpu_s"])
