"""``vivace run``, ``vivace deploy``, ``vivace serve`` and ``vivace python``: each resolves ``import modal`` to
vivace."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import runpy
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vivace import exception as exc
from vivace.cli import entrypoint


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


def load_app(ref: str) -> tuple[Any, Any, str | None]:
    """Install the ``modal`` alias, import ``FILE.py[::NAME]`` and find its app: (module, app, name)."""
    from vivace._sdk import compat

    compat.install()
    module, name = import_app_file(ref)
    return module, find_app(module), name


def select_target(app: Any, ref: str, name: str | None) -> Any:
    """The local entrypoint or function ``vivace run`` calls: named, the only entrypoint, or the only function."""
    if name and "." in name:  # Class.method: call the method of a parameterless instance
        cls_name, _, method = name.partition(".")
        cls = app.registered_classes.get(cls_name)
        if cls is None:
            raise exc.NotFoundError(f"{ref}: no class named {cls_name!r}")
        if method not in cls._function.spec.methods:
            raise exc.NotFoundError(f"{ref}: {cls_name} has no @method named {method!r}")
        return getattr(cls(), method)
    if name:
        target = app.local_entrypoints.get(name) or app.registered_functions.get(name)
        if target is None:
            raise exc.NotFoundError(f"{ref}: no local entrypoint or function named {name!r}")
        if target.spec.is_class:
            raise exc.InvalidError(f"{ref}: {name} is a class: run one of its methods, e.g. {ref}.METHOD")
        return target
    if len(app.local_entrypoints) == 1:
        return next(iter(app.local_entrypoints.values()))
    if not app.local_entrypoints and len(app.registered_functions) == 1:
        return next(iter(app.registered_functions.values()))
    raise exc.InvalidError(f"{ref}: say which entrypoint to run, e.g. {ref}::NAME")


def raw_function(target: Any) -> Callable[..., Any] | None:
    """The Python function whose parameters become the target's options."""
    from vivace.function import Function

    if isinstance(target, Function):
        if target._method is not None and target._base is not None:  # a class method, without self
            user_cls = target._base._vivace_raw_f
            return types.MethodType(getattr(user_cls, target._method), object()) if user_cls else None
        return target._vivace_raw_f
    return target.raw_f  # type: ignore[no-any-return]


def call_target(target: Any, kwargs: dict[str, Any]) -> None:
    """Call a function remotely (echoing its result) or a local entrypoint here (async ones too)."""
    from vivace.function import Function

    if isinstance(target, Function):
        if target._is_generator():
            for item in target.remote_gen(**kwargs):
                click.echo(item)
            return
        result = target.remote(**kwargs)
        if result is not None:
            click.echo(result)
        return
    outcome = target(**kwargs)
    if inspect.iscoroutine(outcome):
        asyncio.run(outcome)


@click.command(context_settings={"allow_interspersed_args": False})
@click.argument("ref")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-d", "--detach", is_flag=True, help="Keep the app running after this command exits.")
@click.option("-q", "--quiet", is_flag=True, help="Don't show logs.")
@click.pass_context
def run(ctx: click.Context, ref: str, args: tuple[str, ...], detach: bool, quiet: bool) -> None:
    """Run an app: FILE.py[::NAME] [--PARAM VALUE]...

    Runs the file's local entrypoint, or calls its function remotely. The target's parameters are
    options given after the file (list them with `vivace run FILE.py --help`); this command's own
    options go before it.
    """
    from vivace._sdk.output import enable_output

    _, app, name = load_app(ref)
    target = select_target(app, ref, name)
    kwargs = entrypoint.parse_args(raw_function(target), args, f"{ctx.command_path} {ref}")
    output = enable_output() if not quiet else contextlib.nullcontext()
    with output, app.run(detach=detach):
        call_target(target, kwargs)
    if detach:
        click.echo(
            f"App {app.app_id} keeps running (detached). Stop it with: vivace app stop {app.app_id}", err=True
        )


@click.command()
@click.argument("ref")
@click.option("--name", default=None, help="Deploy under this name (default: the App's name or the file's).")
def deploy(ref: str, name: str | None) -> None:
    """Deploy an app so its functions can be called by name."""
    module, app, _ = load_app(ref)
    app.deploy(name or app.name or module.__name__)
    click.echo(f"Deployed app {app.name!r} ({app.app_id}), version {app.version}, with functions:")
    for fname, fn in app.registered_functions.items():
        click.echo(f"  {fname}  {fn.object_id}")
    _echo_web_urls(app)


def _echo_web_urls(app: Any) -> None:
    """Each web endpoint's URL, under the functions."""
    from vivace._sdk.connection import get_client
    from vivace._sync import run_sync

    async def urls() -> list[tuple[str, str]]:
        api = await get_client()
        out = []
        for fname, fn in app.registered_functions.items():
            if fn.spec.web is None and not any(m.get("web") for m in fn.spec.methods.values()):
                continue
            data = await api.get_json(f"/v1/functions/{fn.object_id}/web")
            for method, url in sorted(data["urls"].items()):
                out.append((f"{fname}.{method}" if method else fname, url))
        return out

    found = run_sync(urls())
    if found:
        click.echo("Web endpoints:")
        for name, url in found:
            click.echo(f"  {name}  {url}")


@click.command("python", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def python_script(script: str, args: tuple[str, ...]) -> None:
    """Run SCRIPT as `python SCRIPT [ARGS]...` would, with `import modal` resolving to vivace.

    For scripts that call `with app.run(): ...` under `if __name__ == "__main__":`.
    """
    from vivace._sdk import compat

    path = Path(script)
    if not path.is_file():
        raise exc.InvalidError(f"{script} is not a file")
    compat.install()
    sys.argv = [script, *args]
    sys.path.insert(0, str(path.parent.resolve()))
    runpy.run_path(script, run_name="__main__")


WATCH_INTERVAL = 1.0  # seconds between looks at the watched files
WATCH_LIMIT = 5000  # files looked at, at most (a huge tree is watched in part, and says so)
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".ruff_cache"}


def _snapshot(root: Path) -> dict[str, float]:
    """Modification times of the Python files under ``root`` (skipping virtualenvs, caches, .git)."""
    out: dict[str, float] = {}
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(root).parts[:-1]):
            continue
        with contextlib.suppress(OSError):
            out[str(path)] = path.stat().st_mtime
        if len(out) >= WATCH_LIMIT:
            break
    return out


@click.command()
@click.argument("ref")
@click.option("--no-reload", is_flag=True, help="Don't restart the app when its files change.")
@click.option("-q", "--quiet", is_flag=True, help="Don't show logs.")
def serve(ref: str, no_reload: bool, quiet: bool) -> None:
    """Run an app until Ctrl-C, restarting it whenever a Python file beside FILE.py changes.

    The app runs as with `vivace run` (its schedules fire, its functions take calls) and stops when this
    command ends. Each restart stops the old app (its containers finish or requeue their inputs) and
    starts the new code as a new app.
    """
    import signal
    import subprocess
    import time

    if no_reload:
        from vivace._sdk.output import enable_output

        _, app, _ = load_app(ref)
        # a parent's SIGTERM (a reload) ends the run the way Ctrl-C does: the app is stopped
        signal.signal(signal.SIGTERM, _interrupt)
        output = enable_output() if not quiet else contextlib.nullcontext()
        with contextlib.suppress(KeyboardInterrupt), output, app.run():
            click.echo(f"Serving app {app.app_id}; Ctrl-C to stop.", err=True)
            _echo_web_urls(app)
            while True:
                time.sleep(3600)
        click.echo(f"Stopped app {app.app_id}.", err=True)
        return
    path = Path(ref.partition("::")[0])
    if not path.is_file() or path.suffix != ".py":
        raise click.UsageError(f"{path} is not a Python file")
    root = path.resolve().parent
    argv = [sys.executable, "-m", "vivace.cli.main", "serve", "--no-reload", *(["-q"] if quiet else []), ref]
    seen = _snapshot(root)
    if len(seen) >= WATCH_LIMIT:
        click.echo(f"Watching the first {WATCH_LIMIT} Python files under {root} only.", err=True)
    click.echo(f"Watching {len(seen)} Python file(s) under {root} for changes.", err=True)
    child = subprocess.Popen(argv)
    try:
        while True:
            time.sleep(WATCH_INTERVAL)
            now = _snapshot(root)
            if now != seen:
                changed = sorted(p for p in set(now) | set(seen) if now.get(p) != seen.get(p))
                click.echo(
                    f"Changed: {', '.join(Path(p).name for p in changed[:5])}; restarting the app.", err=True
                )
                seen = now
                _stop(child)
                child = subprocess.Popen(argv)
            elif child.poll() is not None:
                click.echo(
                    f"The app exited ({child.returncode}); waiting for a change to start it again.", err=True
                )
                while _snapshot(root) == seen:
                    time.sleep(WATCH_INTERVAL)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(child)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _stop(child: Any) -> None:
    import signal
    import subprocess

    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
