"""``vivace image list|build|rm``."""

from __future__ import annotations

import click

from vivace import exception as exc
from vivace.cli.apps import _api, _ts
from vivace.cli.main import echo_table


@click.group()
def image() -> None:
    """List, build and remove images."""


@image.command("list")
def image_list() -> None:
    """Images the control plane knows, most recently used first."""
    rows = _api("GET", "/v1/images")["images"]
    echo_table(
        rows, ["image_id", "state", "steps", "base", "built_at", "used_at"], {"built_at": _ts, "used_at": _ts}
    )


@image.command("build")
@click.argument("ref")
@click.option("--force", is_flag=True, help="Rebuild every step instead of reusing cached layers.")
def image_build(ref: str, force: bool) -> None:
    """Build the images a file defines: FILE.py (every vivace.Image at its top level) or FILE.py::NAME."""
    import os

    from vivace.cli.runs import import_app_file
    from vivace.image import Image

    if force:
        os.environ["VIVACE_FORCE_BUILD"] = "1"  # read when the file's images are defined
    from vivace._sdk import compat

    compat.install()
    module, name = import_app_file(ref)
    if name:
        found = getattr(module, name, None)
        if not isinstance(found, Image):
            raise exc.NotFoundError(f"{ref}: no vivace.Image named {name!r}")
        targets = {name: found}
    else:
        targets = {k: v for k, v in vars(module).items() if isinstance(v, Image)}
        if not targets:
            raise exc.InvalidError(f"{ref} defines no vivace.Image at its top level")
    for var, img in targets.items():
        img.build(show_logs=True)
        click.echo(f"{var}: {img.object_id}")


@image.command("rm")
@click.argument("image_id")
def image_rm(image_id: str) -> None:
    """Forget an image (layers other images share stay)."""
    _api("DELETE", f"/v1/images/{image_id}")
    click.echo(f"Removed {image_id}")
