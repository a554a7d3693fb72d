"""``vivace dashboard``: open the control plane's dashboard in a browser, signed in."""

from __future__ import annotations

import os
import webbrowser

import click

from vivace.cli.apps import _api


@click.command()
@click.option("--no-browser", is_flag=True, help="Print the sign-in link instead of opening a browser.")
def dashboard(no_browser: bool) -> None:
    """Open the dashboard: apps, calls, containers, workers, sandboxes, volumes, live logs and usage.

    The link signs this browser in once (it works for two minutes); the browser's session then reads
    what your token may read, for 12 hours."""
    from vivace._sdk.connection import get_client
    from vivace._sync import run_sync

    res = _api("POST", "/v1/dashboard/login", json_body={})
    base = str(run_sync(get_client()).base_url).rstrip("/")  # the server this CLI talks to (maybe the daemon)
    url = base + res["path"]
    if no_browser or not _can_open():
        click.echo(f"Open this link within two minutes (it works once):\n{url}")
        return
    click.echo("Opening the dashboard in your browser...")
    if not webbrowser.open(url):
        click.echo(f"Could not start a browser; open this link within two minutes (it works once):\n{url}")


def _can_open() -> bool:
    """A browser can be started here (a display, or macOS/Windows)."""
    return (
        bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        or os.name == "nt"
        or (os.uname().sysname == "Darwin")
    )
