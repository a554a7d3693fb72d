"""``vivace secret ...``: named secrets from the command line. Values go in; only names come out."""

from __future__ import annotations

from pathlib import Path

import click

from vivace.cli.apps import _api, _ts
from vivace.cli.main import echo_table


@click.group("secret")
def secret_group() -> None:
    """Named secrets: create, list, delete (values are never shown)."""


def _pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"expected KEY=VALUE, got an argument without '=' (key {key[:64]!r})")
        env[key] = value
    return env


@secret_group.command("create")
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@click.option(
    "--from-dotenv",
    "dotenv_path",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Read KEY=VALUE lines from this .env file (KEY=VALUE arguments win over it).",
)
@click.option("--force", is_flag=True, help="Replace the values of an existing secret of this name.")
def create(name: str, pairs: tuple[str, ...], dotenv_path: Path | None, force: bool) -> None:
    """Create the secret NAME. Values given as arguments end up in your shell's history: prefer
    --from-dotenv for real credentials."""
    from vivace._sdk import dotenv
    from vivace.secret import Secret

    env: dict[str, str] = {}
    if dotenv_path is not None:
        env.update(dotenv.load(dotenv_path))
    env.update(_pairs(pairs))
    if not env:
        raise click.UsageError("give the secret's values: KEY=VALUE arguments or --from-dotenv PATH")
    Secret.objects.create(name, env, overwrite=force)
    keys = ", ".join(sorted(env))
    click.echo(f"{'Saved' if force else 'Created'} secret {name} with {len(env)} key(s): {keys}")


@secret_group.command("list")
def list_() -> None:
    """Named secrets and when they were created (never their keys or values)."""
    rows = _api("GET", "/v1/objects/secret")["objects"]
    echo_table(
        [{"name": r["name"], "created_at": r["created_at"]} for r in rows],
        ["name", "created_at"],
        {"created_at": _ts},
    )


@secret_group.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
def delete(name: str, yes: bool) -> None:
    """Delete the secret NAME (functions that use it fail to start new containers)."""
    from vivace.secret import Secret

    if not yes:
        click.confirm(f"Delete secret {name}?", abort=True)
    Secret.objects.delete(name)
    click.echo(f"Deleted secret {name}.")
