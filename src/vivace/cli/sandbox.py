"""``vivace sandbox ...`` and ``vivace shell``: list sandboxes, run commands in them, read their logs,
terminate them; and a line-by-line shell in a new one (there is no TTY yet).

``exec`` and ``shell`` run one coroutine on the SDK's loop: the process's stdout and stderr go to this
terminal's as they arrive (bytes, never decoded), and the local stdin is read by a daemon thread (a read
blocked on the terminal must never hold up the exit) and forwarded chunk by chunk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from vivace import exception as exc
from vivace._sdk.output import print_log
from vivace._sync import run_sync
from vivace.cli.apps import _api

SHELL_APP = "vivace-shell"
COLUMNS = ["sandbox_id", "app", "name", "state", "tags", "age", "ran", "exit"]


@click.group("sandbox")
def sandbox_group() -> None:
    """Sandboxes: list them, run commands in them, read their logs, terminate them."""


# -- lookups and formatting ---------------------------------------------------------------------------
def _tags(pairs: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise exc.InvalidError(f"--tag takes KEY=VALUE, got {pair[:64]!r}")
        tags[key] = value
    return tags


def _sandbox(sandbox_id: str) -> Any:
    from vivace.sandbox import Sandbox

    return Sandbox.from_id(sandbox_id)


def _apps() -> list[dict[str, Any]]:
    return list(_api("GET", "/v1/apps", params={"all": 1})["apps"])


def _app_id(ref: str, apps: list[dict[str, Any]], include_stopped: bool) -> str:
    """An app id as given, or the id of the newest app called ``ref`` (a running one first)."""
    if ref.startswith("ap-"):
        return ref
    named = [a for a in apps if a["name"] == ref]
    found = [a for a in named if a["state"] != "stopped"] or (named if include_stopped else [])
    if not found:
        raise exc.NotFoundError(f"no {'' if include_stopped else 'running '}app named {ref!r}")
    return str(found[0]["app_id"])


def _span(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _row(r: dict[str, Any], names: dict[str, str], now: float) -> dict[str, str]:
    started, finished = r.get("started_at"), r.get("finished_at")
    code, result = r.get("returncode"), r.get("result")
    if r["state"] != "finished":
        outcome = ""
    elif code is None:
        outcome = str(result or "")
    else:
        outcome = f"{code} ({result})" if result and result not in ("success", "failure") else str(code)
    return {
        "sandbox_id": r["sandbox_id"],
        "app": names.get(r["app_id"]) or r["app_id"],
        "name": r.get("name") or "",
        "state": r["state"],
        "tags": ", ".join(f"{k}={v}" for k, v in sorted((r.get("tags") or {}).items())),
        "age": _span(now - r["created_at"]),
        "ran": "" if started is None else _span((finished or now) - started),
        "exit": outcome,
    }


@contextlib.contextmanager
def _closed_pipe_ends_quietly() -> Iterator[None]:
    """``... | head``: when the reader of our output goes away, stop without a traceback, as cat does."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
        sys.exit(141)  # 128 + SIGPIPE, as a shell reports it


def _exit_status(code: int) -> int:
    """A process's exit code as this command's: a signal (-N) as 128+N, as shells report it."""
    return 128 - code if code < 0 else min(code, 255)


# -- list, logs, terminate ----------------------------------------------------------------------------
@sandbox_group.command("list")
@click.option("--app", "app_ref", default=None, help="Only this app's sandboxes (a name or an id).")
@click.option("--tag", "tag_pairs", multiple=True, metavar="KEY=VALUE", help="Only sandboxes with this tag.")
@click.option("--all", "all_", is_flag=True, help="Include finished sandboxes.")
@click.option("--json", "as_json", is_flag=True, help="Print the sandboxes as JSON.")
def list_(app_ref: str | None, tag_pairs: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Running sandboxes (with --all, finished ones too), newest first."""
    tags = _tags(tag_pairs)
    apps = _apps()
    query: dict[str, Any] = {"tags": json.dumps(tags), "include_finished": int(all_)}
    if app_ref:
        query["app_id"] = _app_id(app_ref, apps, all_)
    rows = _api("GET", "/v1/sandboxes", params=query)["sandboxes"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    names = {a["app_id"]: a["name"] for a in apps if a["name"]}
    now = time.time()
    _table([_row(r, names, now) for r in rows])


def _table(rows: list[dict[str, str]]) -> None:
    """``echo_table``'s look, but an id is never cut short (it is what one copies) on a narrow terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for c in COLUMNS:
        table.add_column(c, no_wrap=c == "sandbox_id", min_width=23 if c == "sandbox_id" else None)
    for r in rows:
        table.add_row(*(r[c] for c in COLUMNS))
    Console().print(table)


@sandbox_group.command("logs")
@click.argument("sandbox_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the sandbox finishes.")
def logs(sandbox_id: str, follow: bool) -> None:
    """The sandbox's logs: its main process's output and the platform's lines about it."""
    sb = _sandbox(sandbox_id)
    with _closed_pipe_ends_quietly():
        _print_logs(sb, follow)


def _print_logs(sb: Any, follow: bool) -> None:
    """Pages of the sandbox's container's lines; following, until a few seconds after it finished (the
    worker's last lines may still be on their way)."""
    query = {"app": sb._info["app_id"], "container": sb._info["container_id"]}
    ended = sb._info.get("finished_at")
    grace = None if ended is None else time.monotonic() + max(0.0, 3 - (time.time() - ended))
    cursor = 0
    while True:
        wait = 0 if not follow else (1 if grace is not None else 10)
        page = _api("GET", "/v1/logs", params={**query, "cursor": cursor, "wait": wait}, timeout=40)
        for line in page["lines"]:
            print_log(line)
        cursor = page["cursor"]
        if page["lines"]:
            continue
        if not follow or (grace is not None and time.monotonic() > grace):
            return
        if grace is None and _sandbox(sb.object_id)._info.get("state") == "finished":
            grace = time.monotonic() + 3


@sandbox_group.command("terminate")
@click.argument("sandbox_id")
def terminate(sandbox_id: str) -> None:
    """Stop the sandbox (SIGTERM, then SIGKILL after 5 s) and wait until it has stopped."""
    sb = _sandbox(sandbox_id)
    if sb._info.get("state") == "finished":
        click.echo(f"Sandbox {sandbox_id} had already finished ({sb._info.get('result')}).")
        return
    sb.terminate(wait=True)
    click.echo(f"Terminated {sandbox_id}.")


# -- exec and shell -----------------------------------------------------------------------------------
@sandbox_group.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("sandbox_id")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED, metavar="CMD [ARGS]...")
@click.option("--workdir", "-w", default=None, help="Run the command in this directory.")
def exec_(sandbox_id: str, argv: tuple[str, ...], workdir: str | None) -> None:
    """Run CMD in the sandbox, with its output streamed here; exits with CMD's exit code.

    When this command's stdin is a pipe or a file, it is forwarded to CMD; from a terminal, CMD's stdin
    is closed (there is no TTY yet: use `vivace shell` for a line-by-line shell).
    """
    sb = _sandbox(sandbox_id)
    stdin_is_tty = sys.stdin is None or sys.stdin.isatty()
    with _closed_pipe_ends_quietly():
        code = run_sync(_session(sb, list(argv), workdir=workdir, forward_stdin=not stdin_is_tty))
    sys.exit(_exit_status(code))


@click.command("shell")
@click.option(
    "--app", "app_name", default=SHELL_APP, show_default=True, help="Create the sandbox in this app."
)
@click.option(
    "--cmd", default="/bin/sh -i", show_default=True, help="The shell to run (split like a shell would)."
)
@click.option(
    "--image-from",
    "image_ref",
    default=None,
    metavar="FILE.py[::FUNCTION]",
    help="Use the image of this function (or of the file's app) instead of the default image.",
)
@click.option("--timeout", default=3600, show_default=True, help="Seconds before the sandbox is stopped.")
def shell(app_name: str, cmd: str, image_ref: str | None, timeout: int) -> None:
    """Start a sandbox and run a shell in it; the sandbox is terminated when the shell ends.

    There is no TTY yet: lines typed here are sent to the shell when you press Enter, and programs that
    need a terminal (editors, pagers, prompts that hide input) do not work. Leave with `exit` or Ctrl-D;
    Ctrl-C terminates the sandbox.
    """
    from vivace._sdk.output import enable_output
    from vivace.app import App
    from vivace.sandbox import Sandbox

    try:
        argv = shlex.split(cmd)
    except ValueError as err:
        raise exc.InvalidError(f"--cmd: {err}") from None
    if not argv:
        raise exc.InvalidError("--cmd is empty")
    image = _image_from(image_ref) if image_ref else None
    app = App.lookup(app_name, create_if_missing=True)
    with enable_output() if image is not None else contextlib.nullcontext():  # live image build logs
        sb = Sandbox.create(app=app, image=image, timeout=timeout)
    click.echo(f"Sandbox {sb.object_id} in app {app_name}: no TTY, lines are sent on Enter.", err=True)
    try:
        with _closed_pipe_ends_quietly():
            code = run_sync(_session(sb, argv, workdir=None, forward_stdin=sys.stdin is not None))
    finally:
        with contextlib.suppress(exc.Error):
            sb.terminate()
    sys.exit(_exit_status(code))


def _image_from(ref: str) -> Any:
    """The image the function ``FILE.py::FUNCTION`` runs in (or, without one, the file's app's)."""
    from vivace.cli.runs import load_app

    _, app, name = load_app(ref)
    if name is None:
        return app.image
    fn = app.registered_functions.get(name) or app.registered_classes.get(name)
    if fn is None:
        raise exc.NotFoundError(f"{ref}: no function named {name!r}")
    fn = getattr(fn, "_function", fn)  # a class: its service function
    return getattr(fn, "_image", None) or app.image


async def _session(sb: Any, argv: list[str], *, workdir: str | None, forward_stdin: bool) -> int:
    """Run ``argv`` in the sandbox with its output written here; its exit code."""
    proc = await sb.exec.aio(*argv, text=False, workdir=workdir)
    pumps = [
        asyncio.ensure_future(_pump(proc.stdout, sys.stdout)),
        asyncio.ensure_future(_pump(proc.stderr, sys.stderr)),
    ]
    feeder = asyncio.ensure_future(_feed(proc) if forward_stdin else _close_stdin(proc))
    waiter = asyncio.ensure_future(proc.wait.aio())
    try:
        # together: a pump that fails (our stdout was closed) must not wait for a process it blocks
        await asyncio.gather(waiter, *pumps)  # the streams end once the process's pipes close
        return int(waiter.result())
    finally:
        for task in (feeder, waiter, *pumps):
            task.cancel()
        await asyncio.gather(feeder, waiter, *pumps, return_exceptions=True)


async def _pump(reader: Any, out: Any) -> None:
    target = getattr(out, "buffer", out)
    async for chunk in reader:
        target.write(chunk)
        target.flush()


async def _close_stdin(proc: Any) -> None:
    with contextlib.suppress(exc.Error):
        proc.stdin.write_eof()
        await proc.stdin.drain.aio()


async def _feed(proc: Any) -> None:
    """Forward the local stdin to the process until it ends (then close the process's stdin)."""
    chunks = _stdin_chunks()
    try:
        while (chunk := await chunks.get()) is not None:
            proc.stdin.write(chunk)
            await proc.stdin.drain.aio()
        proc.stdin.write_eof()
        await proc.stdin.drain.aio()
    except exc.Error:
        return  # the process closed its stdin or exited: what it did not take is dropped, as with a pipe


def _stdin_chunks() -> asyncio.Queue[bytes | None]:
    """Chunks of the local stdin as they are read (a line at a time from a terminal); None at its end.
    The reader waits while a few chunks are unsent, so a large input is not all held in memory."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)

    def read() -> None:
        while True:
            try:
                chunk = os.read(sys.stdin.fileno(), 1 << 16)
            except (OSError, ValueError):
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(chunk or None), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):  # the loop or the session has gone
                return
            if not chunk:
                return

    threading.Thread(target=read, name="vivace-stdin", daemon=True).start()
    return queue
