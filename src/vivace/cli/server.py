"""``vivace server`` (control plane; ``status`` and ``stop`` for the local daemon) and ``vivace worker``."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import click

from vivace._sdk.config import vivace_home
from vivace.cli.times import parse_duration
from vivace.protocol.usage import check_pool


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8700, show_default=True, type=click.IntRange(0, 65535))
@click.option("--home", type=click.Path(path_type=Path), default=None, help="State directory (VIVACE_HOME).")
@click.option("--store", default=None, help="sqlite:///PATH (default under --home) or postgresql://...")
@click.option("--embedded", is_flag=True, help="Also run a local worker (the embedded default).")
@click.option(
    "--web-domain",
    default=None,
    help="Serve web endpoints at <app>-<label>.DOMAIN (wildcard DNS to this server; DOMAIN may end in "
    ":PORT). They are always reachable by path too, at <server>/web/<app>-<label>/.",
)
@click.option(
    "--pools",
    "pools_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A TOML file of worker pools' prices per second (default: pools.toml in --home where it exists).",
)
@click.option(
    "--log-retention",
    default="30d",
    show_default=True,
    help="Delete log lines older than this (30d, 12h, 90m; 0: keep them forever).",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    help="Send OpenTelemetry spans of calls and container starts to this OTLP/HTTP URL (.../v1/traces; "
    "default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT).",
)
@click.pass_context
def server(
    ctx: click.Context,
    host: str,
    port: int,
    home: Path | None,
    store: str | None,
    embedded: bool,
    web_domain: str | None,
    pools_file: Path | None,
    log_retention: str,
    otlp_endpoint: str | None,
) -> None:
    """Run the control plane."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        from vivace.server.main import serve
        from vivace.server.secretbox import SecretKeyError
        from vivace.server.services.metering import PriceError
    except ImportError as err:
        raise click.ClickException(
            f"the server needs its extra: pip install 'vivace[server]' ({err})"
        ) from None
    retention = parse_duration(log_retention, "--log-retention")
    from vivace.server.otlp import from_env

    try:
        from_env(otlp_endpoint)  # checked before anything starts
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--otlp-endpoint") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if web_domain is not None:
            _check_domain(web_domain)
        serve(
            host=host,
            port=port,
            home=home or vivace_home(),
            store_url=store,
            embedded=embedded,
            web_domain=web_domain,
            pools_file=pools_file,
            log_retention=retention,
            otlp_endpoint=otlp_endpoint,
        )
    except (SecretKeyError, PriceError) as err:
        raise click.ClickException(f"cannot start: {err}") from None


def _check_domain(domain: str) -> None:
    import re

    name, _, port = domain.partition(":")
    ok = re.fullmatch(
        r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", name
    )
    if not ok or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise click.BadParameter(f"{domain!r} is not a lowercase DNS name (with an optional :PORT)")


@server.command("status")
def server_status() -> None:
    """Show whether the local daemon runs."""
    from vivace._sdk.daemon import running_daemon

    state = running_daemon(vivace_home())
    if state is None:
        click.echo("No local vivace daemon is running.")
        raise SystemExit(1)
    click.echo(f"vivace {state['version']} running at {state['url']} (pid {state['pid']})")


@server.command("stop")
def server_stop() -> None:
    """Stop the local daemon and its containers."""
    from vivace._sdk.daemon import stop_daemon

    if stop_daemon(vivace_home()):
        click.echo("Stopped the local vivace daemon.")
    else:
        click.echo("No local vivace daemon was running.")


@click.command()
@click.option("--server", "server_url", required=True, help="Control plane URL.")
@click.option("--token", default=None, help="Worker token TOKEN_ID:SECRET (or VIVACE_WORKER_TOKEN).")
@click.option(
    "--dir", "workdir", type=click.Path(path_type=Path), default=None, help="Worker state directory."
)
@click.option("--name", default=None, help="Worker name (default: host name).")
@click.option("--cpu", type=click.FloatRange(min=0.01), default=None, help="Cores to offer (default: all).")
@click.option("--memory", type=click.IntRange(min=16), default=None, help="MiB to offer (default: all).")
@click.option("--runtimes", default=None, help="Comma-separated runtimes to offer (default: all available).")
@click.option(
    "--pool",
    default="default",
    show_default=True,
    help="The worker pool this machine belongs to: its containers are billed at the pool's prices.",
)
@click.option(
    "--pids-limit",
    type=click.IntRange(min=8),
    default=4096,
    show_default=True,
    help="Most processes and threads one container may have (isolated runtimes).",
)
@click.option(
    "--warm-pool",
    type=click.IntRange(min=0, max=64),
    default=2,
    show_default=True,
    help="Generic containers kept started for fast starts (default runtime; 0: none).",
)
@click.option(
    "--sandbox-pool",
    type=click.IntRange(min=0, max=128),
    default=None,
    help="Sandboxes kept pre-created on the default sandbox runtime, for bursts of creates "
    "(default: as --warm-pool; each holds one of the worker's 256 network slots and a running "
    "container's memory).",
)
@click.option(
    "--layer-cache-gb",
    type=click.FloatRange(min=0.1),
    default=50.0,
    show_default=True,
    help="Unpacked image layers kept on this machine; the least recently used beyond it are removed.",
)
def worker(
    server_url: str,
    token: str | None,
    workdir: Path | None,
    name: str | None,
    cpu: float | None,
    memory: int | None,
    runtimes: str | None,
    pool: str,
    pids_limit: int,
    warm_pool: int,
    sandbox_pool: int | None,
    layer_cache_gb: float,
) -> None:
    """Run a worker agent that executes containers for a control plane."""
    import asyncio

    from vivace.worker.agent import Agent, WorkerConfig

    token = token or os.environ.get("VIVACE_WORKER_TOKEN")
    if not token:
        raise click.UsageError("a worker token is required: --token TOKEN_ID:SECRET or VIVACE_WORKER_TOKEN")
    try:
        check_pool(pool)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--pool") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    total_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    config = WorkerConfig(
        server_url=server_url,
        token=token,
        workdir=workdir or vivace_home() / "worker",
        name=name or socket.gethostname(),
        cpu=cpu or float(os.cpu_count() or 1),
        memory=memory or total_mem,
        runtimes=[r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None,
        pids_limit=pids_limit,
        warm_pool=warm_pool,
        sandbox_pool=sandbox_pool,
        layer_cache_gb=layer_cache_gb,
        labels={"pool": pool},
    )
    try:
        import uvloop
    except ImportError:  # uvloop comes with the server extra; plain asyncio works too
        asyncio.run(Agent(config).run())
    else:
        uvloop.run(Agent(config).run())


@click.command()
def doctor() -> None:
    """Say what this host supports for running containers, and what is missing."""
    from rich.console import Console
    from rich.table import Table

    from vivace.worker.doctor import checks, default_runtime

    table = Table("check", "", "detail", "how to fix")
    results = checks()
    for c in results:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]missing[/]", c.detail, "" if c.ok else c.fix)
    console = Console()
    console.print(table)
    runtime = default_runtime()
    if runtime == "process":
        console.print(
            "[yellow]functions will run with the 'process' runtime: no isolation (development only)[/]"
        )
        raise SystemExit(1)
    console.print(f"functions run with [bold]{runtime}[/] by default")
