"""``vivace volume ...``: named Volumes from the command line, with progress bars for transfers."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from vivace.cli.main import echo_table
from vivace.cli.storage import _add_common


@click.group("volume")
def volume_group() -> None:
    """Named Volumes: list, create, look into, upload, download, remove, copy, delete."""


_add_common(volume_group, "volume")


def _vol(name: str) -> Any:
    from vivace import Volume

    return Volume.from_name(name)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@contextlib.contextmanager
def _progress(what: str, total: int | None) -> Iterator[Any]:
    """A transfer bar on a terminal (``advance(n)``); silent when output is not a terminal."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


@volume_group.command("ls")
@click.argument("name")
@click.argument("path", default="/")
@click.option("--recursive", "-r", is_flag=True, help="Everything below PATH, not only its entries.")
def ls(name: str, path: str, recursive: bool) -> None:
    """List the files and directories at PATH."""
    rows = [
        {
            "path": e.path + ("/" if e.type.name == "DIRECTORY" else ""),
            "type": e.type.name.lower(),
            "size": "" if e.type.name == "DIRECTORY" else _size(e.size),
            "modified": datetime.fromtimestamp(e.mtime, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        }
        for e in _guard(lambda: _vol(name).listdir(path, recursive=recursive))
    ]
    echo_table(rows, ["path", "type", "size", "modified"])


def _guard(fn: Any) -> Any:
    """File errors as CLI errors (exit 1 with a message)."""
    try:
        return fn()
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError) as err:
        raise click.ClickException(str(err)) from None


@volume_group.command("put")
@click.argument("name")
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("remote", default="/")
@click.option("--force", "-f", is_flag=True, help="Overwrite files that exist in the volume.")
def put(name: str, local: Path, remote: str, force: bool) -> None:
    """Upload a file or a directory to REMOTE (a directory when it ends with '/')."""
    vol = _vol(name)
    upload = vol.batch_upload(force=force)
    if local.is_dir():
        _guard(lambda: upload.put_directory(local, remote))
        target = remote
    else:
        target = remote + local.name if remote.endswith("/") else remote
        _guard(lambda: upload.put_file(local, target))
    total = upload.total_bytes()
    with _progress(f"put {local.name}", total) as advance:
        upload.progress = advance
        _guard(lambda: upload.__exit__(None, None, None))
    click.echo(f"Uploaded {_size(total)} to {name}:{target}")


@volume_group.command("get")
@click.argument("name")
@click.argument("remote")
@click.argument("local", default=".")
@click.option("--force", "-f", is_flag=True, help="Overwrite local files.")
def get(name: str, remote: str, local: str, force: bool) -> None:
    """Download a file or a directory from the volume; LOCAL '-' writes a file to stdout."""
    vol = _vol(name)
    entries = _guard(lambda: vol.listdir(remote, recursive=True))
    files = [e for e in entries if e.type.name == "FILE"]
    single = len(entries) == 1 and files and files[0].path.strip("/") == remote.strip("/")
    if local == "-":
        if not single:
            raise click.ClickException(f"{remote} is a directory: give a local directory instead of '-'")
        for chunk in vol.read_file(remote):
            sys.stdout.buffer.write(chunk)
        return
    base = remote.strip("/")
    dest_root = Path(local)
    plan: list[tuple[Any, Path]] = []
    for e in files:
        if single:
            dest = dest_root / Path(base).name if dest_root.is_dir() else dest_root
        else:
            rel = e.path[len(base) :].lstrip("/") if base else e.path
            dest = dest_root / Path(base).name / rel if base else dest_root / rel
        if dest.exists() and not force:
            raise click.ClickException(f"{dest} exists (use --force to overwrite)")
        plan.append((e, dest))
    total = sum(e.size for e, _ in plan)
    with _progress(f"get {Path(base).name or name}", total) as advance:
        for e, dest in plan:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _download(vol, e.path, dest, advance)
    click.echo(f"Downloaded {len(plan)} file(s), {_size(total)}, to {dest_root}")


def _download(vol: Any, path: str, dest: Path, advance: Any) -> None:
    """Into a temporary file beside ``dest``, renamed when complete (no half-written files)."""
    from vivace._sync import run_sync

    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        _guard(lambda: run_sync(vol._download(path, Path(name), advance)))
        os.replace(name, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


@volume_group.command("rm")
@click.argument("name")
@click.argument("path")
@click.option("--recursive", "-r", is_flag=True, help="Remove a directory and everything in it.")
def rm(name: str, path: str, recursive: bool) -> None:
    """Remove a file (or, with -r, a directory) from the volume."""
    from vivace import exception as exc

    try:
        _guard(lambda: _vol(name).remove_file(path, recursive=recursive))
    except exc.ConflictError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Removed {name}:{path}")


@volume_group.command("cp")
@click.argument("name")
@click.argument("paths", nargs=-1, required=True)
def cp(name: str, paths: tuple[str, ...]) -> None:
    """Copy SRC... DST inside the volume (into DST when it is a directory or ends with '/')."""
    from vivace import exception as exc

    if len(paths) < 2:
        raise click.UsageError("give one or more sources and a destination")
    try:
        _guard(lambda: _vol(name).copy_files(list(paths[:-1]), paths[-1]))
    except exc.ConflictError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Copied {len(paths) - 1} path(s) to {name}:{paths[-1]}")
