"""``vivace app``, ``vivace container`` and ``vivace token``."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

import click

from vivace._sdk.connection import get_client
from vivace._sdk.output import print_log
from vivace._sync import run_sync
from vivace.cli.main import echo_table
from vivace.cli.times import parse_when


def _api(method: str, path: str, **kw: Any) -> Any:
    async def go() -> Any:
        api = await get_client()
        return (await api.request(method, path, **kw)).json()

    return run_sync(go())


def _ts(v: Any) -> str:
    return "" if v is None else datetime.datetime.fromtimestamp(v).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def app() -> None:
    """List, follow and stop apps."""


@app.command("list")
@click.option("--all", "all_", is_flag=True, help="Include stopped apps.")
def app_list(all_: bool) -> None:
    rows = _api("GET", "/v1/apps", params={"all": int(all_)})["apps"]
    echo_table(
        rows, ["app_id", "name", "state", "containers", "created_at", "stop_reason"], {"created_at": _ts}
    )


@app.command("stop")
@click.argument("app_ref")
def app_stop(app_ref: str) -> None:
    res = _api("POST", f"/v1/apps/{app_ref}/stop", json_body={})
    click.echo(f"Stopped {res['app_id']}")


@app.command("history")
@click.argument("app_ref")
def app_history(app_ref: str) -> None:
    """The app's deploys, newest first (the newest 20 are kept)."""
    rows = _api("GET", f"/v1/apps/{app_ref}/versions")["versions"]
    for r in rows:
        r["functions"] = ", ".join(r["functions"])
    echo_table(rows, ["version", "created_at", "functions", "note"], {"created_at": _ts})


@app.command("rollback")
@click.argument("app_ref")
@click.argument("version", type=click.IntRange(min=1), required=False)
def app_rollback(app_ref: str, version: int | None) -> None:
    """Deploy VERSION of the app again (default: the one before the current), as a new version."""
    res = _api("POST", f"/v1/apps/{app_ref}/rollback", json_body={"version": version})
    click.echo(
        f"Rolled {res['app_id']} back to version {res['rolled_back_to']} (now version {res['version']})"
    )


@app.command("schedules")
@click.argument("app_ref")
def app_schedules(app_ref: str) -> None:
    """The app's scheduled functions: schedule, last run and next run (local time)."""
    rows = _api("GET", f"/v1/apps/{app_ref}/schedules")["schedules"]
    for r in rows:
        s = r["schedule"]
        r["schedule"] = f"cron {s['cron']} ({s['timezone']})" if "cron" in s else f"every {s['period']:g} s"
    echo_table(rows, ["name", "schedule", "last_tick", "next_run"], {"last_tick": _ts, "next_run": _ts})


def _follow(params: dict[str, Any], follow: bool) -> None:
    cursor = 0
    while True:
        page = _api(
            "GET", "/v1/logs", params={**params, "cursor": cursor, "wait": 10 if follow else 0}, timeout=40
        )
        for line in page["lines"]:
            print_log(line)
        cursor = page["cursor"]
        if not follow and not page["lines"]:
            return
        if not page["lines"]:
            time.sleep(0.1)


STREAM_CHOICES = click.Choice(["stdout", "stderr", "system", "platform"])


def _log_filters(f: Callable[..., Any]) -> Callable[..., Any]:
    """The filters every ``logs`` command takes."""
    for option in reversed(
        [
            click.option("-f", "--follow", is_flag=True, help="Keep printing new lines."),
            click.option("--search", default=None, help="Only lines containing this text."),
            click.option("--since", default=None, help="From: 10m, 2h, 7d, today, 2026-11-01T12:00 (UTC)."),
            click.option("--until", default=None, help="Up to, in the same forms."),
            click.option(
                "--stream",
                "streams",
                multiple=True,
                type=STREAM_CHOICES,
                help="Only these streams (repeat it); platform: containers' starts and stops.",
            ),
        ]
    ):
        f = option(f)
    return f


def _filter_params(
    search: str | None, since: str | None, until: str | None, streams: tuple[str, ...]
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if search:
        params["search"] = search
    if since:
        params["since"] = parse_when(since)
    if until:
        params["until"] = parse_when(until)
    if streams:
        params["stream"] = ",".join(streams)
    return params


@app.command("logs")
@click.argument("app_ref")
@_log_filters
@click.option("--function", "function", default=None, help="Only this function's lines (its name).")
@click.option("--call", "call_id", default=None, help="Only this call's lines (fc-...).")
def app_logs(
    app_ref: str,
    follow: bool,
    search: str | None,
    since: str | None,
    until: str | None,
    streams: tuple[str, ...],
    function: str | None,
    call_id: str | None,
) -> None:
    """An app's logs: its containers' output and the platform's lines about them ([vivace])."""
    params: dict[str, Any] = {"app": app_ref, **_filter_params(search, since, until, streams)}
    if function:
        params["function"] = function
    if call_id:
        params["call"] = call_id
    _follow(params, follow)


@click.group()
def container() -> None:
    """List containers, read their logs, run commands in them, stop them."""


@container.command("list")
@click.option("--app", "app_ref", default=None)
@click.option("--all", "all_", is_flag=True, help="Include stopped containers.")
def container_list(app_ref: str | None, all_: bool) -> None:
    params: dict[str, Any] = {"all": int(all_)}
    if app_ref:
        params["app"] = app_ref
    rows = _api("GET", "/v1/containers", params=params)["containers"]
    echo_table(
        rows,
        ["container_id", "app_id", "function", "state", "inputs_served", "created_at", "stop_reason"],
        {"created_at": _ts},
    )


@container.command("show")
@click.argument("container_id")
def container_show(container_id: str) -> None:
    """A container's state, its start phases, and its meter: billed time (cold start, busy, idle), rate
    and cost, beside the CPU seconds and peak memory its cgroup counted."""
    c = _api("GET", f"/v1/containers/{container_id}")
    m = c["meter"]
    click.echo(f"{c['container_id']}  {c['function']} of {c['app_id']}  {c['state']}"
               + (f" ({c['stop_reason']})" if c.get("stop_reason") else ""))  # fmt: skip
    p = m["phases"]
    base = p["created_at"]
    for name in ("created_at", "assigned_at", "image_ready_at", "started_at", "ready_at", "stopped_at"):
        at = p.get(name)
        since = "" if at is None or base is None else f"  +{at - base:.3f} s"
        click.echo(f"  {name.removesuffix('_at'):12} {_ts(at) or '-'}{since}")
    gpu = f", {m['gpu_count']} x {m['gpu_type']}" if m["gpu_count"] else ""
    reserved = m["reserved"]
    click.echo(
        f"  reserved     {reserved['cpu']:g} cores, {reserved['memory_mib']} MiB{gpu} in pool {m['pool']}"
    )
    click.echo(
        f"  billed       {m['billed_s']:.1f} s (cold {m['cold_s']:.1f}, busy {m['busy_s']:.1f}, idle "
        f"{m['idle_s']:.1f}) at {m['rate_per_s']:.8f}/s = {m['cost']:.6f}"
    )
    cpu = "not measured" if m["cpu_used_s"] is None else f"{m['cpu_used_s']:.2f} s"
    peak = "not measured" if m["memory_peak"] is None else f"{m['memory_peak'] / (1 << 20):.1f} MiB"
    click.echo(f"  kernel       CPU used {cpu}, peak memory {peak}")


@container.command("logs")
@click.argument("container_id")
@_log_filters
def container_logs(
    container_id: str,
    follow: bool,
    search: str | None,
    since: str | None,
    until: str | None,
    streams: tuple[str, ...],
) -> None:
    """A container's output and the platform's lines about it."""
    _follow({"container": container_id, **_filter_params(search, since, until, streams)}, follow)


@container.command("stop")
@click.argument("container_id")
def container_stop(container_id: str) -> None:
    _api("POST", f"/v1/containers/{container_id}/stop", json_body={})
    click.echo(f"Stopping {container_id}")


@container.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("container_id")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", default=60.0, show_default=True)
def container_exec(container_id: str, argv: tuple[str, ...], timeout: float) -> None:
    """Run a command inside a running container."""
    res = _api(
        "POST",
        f"/v1/containers/{container_id}/exec",
        json_body={"argv": list(argv), "timeout": timeout},
        timeout=timeout + 30,
    )
    click.echo(res["stdout"], nl=False)
    click.echo(res["stderr"], nl=False, err=True)
    raise SystemExit(res["returncode"])


@click.group()
def token() -> None:
    """Create and inspect API tokens."""


@token.command("new")
@click.option("--kind", type=click.Choice(["user", "worker", "proxy"]), default="user", show_default=True)
@click.option("--label", default=None)
def token_new(kind: str, label: str | None) -> None:
    """Create a token. A proxy token opens web endpoints with requires_proxy_auth=True (send its id and
    secret as the Modal-Key and Modal-Secret headers) and nothing else."""
    res = _api("POST", "/v1/tokens", json_body={"kind": kind, "label": label})
    click.echo(f"token id:     {res['token_id']}\ntoken secret: {res['token_secret']}")
    if kind == "proxy":
        click.echo("Send them as the headers Modal-Key: <token id> and Modal-Secret: <secret>.", err=True)
        return
    click.echo(
        "The secret is shown once. Use it as VIVACE_TOKEN_ID / VIVACE_TOKEN_SECRET, or for a worker:"
        f" --token {res['token_id']}:<secret>",
        err=True,
    )


@token.command("info")
def token_info() -> None:
    res = _api("GET", "/v1/tokens/me")
    click.echo(f"{res['token_id']} ({res['kind']})")
