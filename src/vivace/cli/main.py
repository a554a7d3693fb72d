"""``vivace``: run and deploy apps, inspect apps and containers, run the server and workers.

Exit codes: 0 success, 1 the user's code or the platform failed, 2 bad usage or input,
3 authentication or permission failure, 4 not found.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from vivace import exception as exc

EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (exc.AuthError, 3),
    (exc.PermissionDeniedError, 3),
    (exc.NotFoundError, 4),
    (exc.InvalidError, 2),
    (exc.VersionError, 2),
]


def fail(err: BaseException) -> None:
    code = next((c for t, c in EXIT_CODES if isinstance(err, t)), 1)
    tb = getattr(err, "__vivace_remote_traceback__", None)
    if tb:
        click.echo(tb.rstrip(), err=True)
    name = type(err).__name__
    click.secho(
        f"Error: {name}: {err}" if not str(err).startswith(name) else f"Error: {err}", fg="red", err=True
    )
    sys.exit(code)


class VivaceGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except exc.Error as err:
            fail(err)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=VivaceGroup)
@click.version_option(package_name="vivace")
def cli() -> None:
    """Vivace: self-hosted serverless compute for AI, with Modal's API."""


def _register() -> None:
    from vivace.cli import apps, dashboard, images, runs, sandbox, secret, server, storage, usage, volume

    for cmd in (
        runs.run,
        runs.deploy,
        runs.serve,
        runs.python_script,
        apps.app,
        apps.container,
        apps.token,
        images.image,
        storage.dict_group,
        storage.queue_group,
        secret.secret_group,
        volume.volume_group,
        sandbox.sandbox_group,
        sandbox.shell,
        server.server,
        server.worker,
        server.doctor,
        usage.usage,
        usage.pool,
        dashboard.dashboard,
    ):
        cli.add_command(cmd)


def main(argv: list[str] | None = None) -> None:
    _register()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli.main(args=argv, prog_name="vivace")


def echo_table(
    rows: list[dict[str, Any]], columns: list[str], fmt: dict[str, Callable[[Any], str]] | None = None
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for r in rows:
        table.add_row(*((fmt or {}).get(c, lambda v: "" if v is None else str(v))(r.get(c)) for c in columns))
    Console().print(table)


if __name__ == "__main__":
    main()
