"""``vivace run`` and ``vivace deploy``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import click

from vivace import exception as exc


def import_app_file(ref: str) -> tuple[Any, str | None]:
    """Import ``path/to/file.py[::name]`` under the file's module name; return (module, name)."""
    path_s, _, name = ref.partition("::")
    path = Path(path_s)
    if not path.is_file() or path.suffix != ".py":
        raise exc.InvalidError(f"{path_s} is not a Python file")
    module_name = path.stem
    sys.path.insert(0, str(path.parent.resolve()))
    spec = importlib.util.spec_from_file_location(module_name, path.resolve())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module, name or None


def find_app(module: Any) -> Any:
    from vivace.app import App

    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if not apps:
        raise exc.InvalidError(f"{module.__name__} defines no vivace.App")
    if len(apps) > 1:
        named = [a for a in apps if getattr(module, "app", None) is a]
        if named:
            return named[0]
        raise exc.InvalidError(f"{module.__name__} defines several apps; name the one to run `app`")
    return apps[0]


@click.command()
@click.argument("ref")
@click.argument("args", nargs=-1)
@click.option("-d", "--detach", is_flag=True, help="Keep the app running after this command exits.")
@click.option("-q", "--quiet", is_flag=True, help="Don't show logs.")
def run(ref: str, args: tuple[str, ...], detach: bool, quiet: bool) -> None:
    """Run an app: FILE.py[::FUNCTION] [ARGS]..."""
    from vivace._sdk.output import enable_output
    from vivace.function import Function

    module, name = import_app_file(ref)
    app = find_app(module)
    target: Any
    if name:
        target = app.local_entrypoints.get(name) or app.registered_functions.get(name)
        if target is None:
            raise exc.NotFoundError(f"{ref}: no local entrypoint or function named {name!r}")
    elif len(app.local_entrypoints) == 1:
        target = next(iter(app.local_entrypoints.values()))
    elif not app.local_entrypoints and len(app.registered_functions) == 1:
        target = next(iter(app.registered_functions.values()))
    else:
        raise exc.InvalidError(f"{ref}: say which entrypoint to run, e.g. {ref}::NAME")
    ctx = enable_output() if not quiet else _null()
    with ctx, app.run(detach=detach):
        if isinstance(target, Function):
            result = target.remote(*args)
            if result is not None:
                click.echo(result)
        else:
            target(*args)
    if detach:
        click.echo(
            f"App {app.app_id} keeps running (detached). Stop it with: vivace app stop {app.app_id}", err=True
        )


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


@click.command()
@click.argument("ref")
@click.option("--name", default=None, help="Deploy under this name (default: the App's name or the file's).")
def deploy(ref: str, name: str | None) -> None:
    """Deploy an app so its functions can be called by name."""
    module, _ = import_app_file(ref)
    app = find_app(module)
    app.deploy(name or app.name or module.__name__)
    click.echo(f"Deployed app {app.name!r} ({app.app_id}) with functions:")
    for fname, fn in app.registered_functions.items():
        click.echo(f"  {fname}  {fn.object_id}")
