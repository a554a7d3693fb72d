"""``vivace dict ...`` and ``vivace queue ...``: named Dicts and Queues from the command line."""

from __future__ import annotations

from typing import Any

import click

from vivace.cli.apps import _api, _ts
from vivace.cli.main import echo_table

MAX_SHOWN = 1000


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _add_common(group: click.Group, kind: str) -> None:
    """``list``, ``create NAME`` and ``delete NAME`` for one kind of object."""
    label = kind.capitalize()

    def handle() -> Any:
        import vivace

        return getattr(vivace, label)

    @group.command("list")
    def list_() -> None:
        """Named objects of this kind."""
        rows = _api("GET", f"/v1/objects/{kind}")["objects"]
        echo_table(rows, ["name", "object_id", "created_at"], {"created_at": _ts})

    @group.command("create")
    @click.argument("name")
    def create(name: str) -> None:
        handle().objects.create(name)
        click.echo(f"Created {label} {name}.")

    @group.command("delete")
    @click.argument("name")
    @click.option("--yes", "-y", is_flag=True, help="Do not ask.")
    def delete(name: str, yes: bool) -> None:
        if not yes:
            click.confirm(f"Delete {label} {name} and its contents?", abort=True)
        handle().objects.delete(name)
        click.echo(f"Deleted {label} {name}.")


@click.group("dict")
def dict_group() -> None:
    """Named Dicts: list, create, look into, clear, delete."""


@dict_group.command("get")
@click.argument("name")
@click.argument("key")
def dict_get(name: str, key: str) -> None:
    """Print the value of KEY (a string key)."""
    from vivace import Dict

    d = Dict.from_name(name)
    value = d.get(key, default=_Missing)
    if value is _Missing:
        raise click.ClickException(f"Dict {name} has no key {key!r}")
    click.echo(_show(value))


class _Missing:
    pass


@dict_group.command("items")
@click.argument("name")
@click.option("-n", "limit", type=click.IntRange(1, MAX_SHOWN), default=20, show_default=True)
def dict_items(name: str, limit: int) -> None:
    """Print up to N entries."""
    from vivace import Dict

    rows = []
    for key, value in Dict.from_name(name).items():
        rows.append({"key": _show(key), "value": _show(value)})
        if len(rows) >= limit:
            break
    echo_table(rows, ["key", "value"], {})


@dict_group.command("clear")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
def dict_clear(name: str, yes: bool) -> None:
    from vivace import Dict

    if not yes:
        click.confirm(f"Remove every entry of Dict {name}?", abort=True)
    Dict.from_name(name).clear()
    click.echo(f"Cleared Dict {name}.")


@click.group("queue")
def queue_group() -> None:
    """Named Queues: list, create, peek, count, clear, delete."""


@queue_group.command("peek")
@click.argument("name")
@click.option("-n", "n", type=click.IntRange(1, MAX_SHOWN), default=1, show_default=True)
@click.option("--partition", default=None)
def queue_peek(name: str, n: int, partition: str | None) -> None:
    """Print the first N items, leaving them in the queue."""
    from vivace import Queue

    for item in Queue.from_name(name).peek(n, partition=partition):
        click.echo(_show(item))


@queue_group.command("len")
@click.argument("name")
@click.option("--partition", default=None)
@click.option("--total", is_flag=True, help="Count every partition.")
def queue_len(name: str, partition: str | None, total: bool) -> None:
    from vivace import Queue

    click.echo(str(Queue.from_name(name).len(partition=partition, total=total)))


@queue_group.command("clear")
@click.argument("name")
@click.option("--partition", default=None)
@click.option("--all", "all_", is_flag=True, help="Every partition.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
def queue_clear(name: str, partition: str | None, all_: bool, yes: bool) -> None:
    from vivace import Queue

    if not yes:
        click.confirm(f"Remove the items of Queue {name}?", abort=True)
    Queue.from_name(name).clear(partition=partition, all=all_)
    click.echo(f"Cleared Queue {name}.")


_add_common(dict_group, "dict")
_add_common(queue_group, "queue")
