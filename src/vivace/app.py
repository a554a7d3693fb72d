"""``App``: a named group of functions that run together, ephemerally or deployed."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

from vivace import exception as exc
from vivace._sdk import params
from vivace._sdk.connection import get_client
from vivace._sdk.output import is_enabled, print_log
from vivace._sdk.source import main_file, package
from vivace._sync import run_sync
from vivace.decorators import BATCHED, CONCURRENT
from vivace.function import Function, is_generator_function
from vivace.protocol import frames
from vivace.protocol.functions import FunctionSpec

HEARTBEAT_INTERVAL = 5.0


class LocalEntrypoint:
    def __init__(self, app: App, fn: Callable[..., Any], name: str) -> None:
        self.app, self.raw_f, self.name = app, fn, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)


class App:
    """A group of functions deployed or run together.

    Args:
        name: the app's name (needed to deploy it).
        tags, image, secrets, volumes, include_source: as in Modal; ``image``, ``secrets`` and
            ``volumes`` need features a later release adds and raise ``NotImplementedYetError``.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        tags: dict[str, str] | None = None,
        image: Any = None,
        secrets: list[Any] | None = None,
        volumes: dict[str, Any] | None = None,
        include_source: bool = True,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("stub", None) is not None:
            raise exc.InvalidError("vivace.Stub was renamed: use vivace.App")
        params.reject_unknown(kwargs, "App()")
        if name is not None and not isinstance(name, str):
            raise exc.InvalidError(f"App name must be a string, got {type(name).__name__}")
        self.image = _image_arg(image)
        self.secrets = params.secrets(secrets)  # defaults for every function of the app
        self.volumes = params.volumes(volumes)
        self.name = name
        self.tags = dict(tags or {})
        self.include_source = params.flag("include_source", include_source)
        self.registered_functions: dict[str, Function] = {}
        self.registered_classes: dict[str, Any] = {}  # name -> Cls
        self.local_entrypoints: dict[str, LocalEntrypoint] = {}
        self.app_id: str | None = None
        self.version: int | None = None  # after deploy(): the app's version that deploy made
        self._heartbeat: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._log_cursor = 0
        self._heartbeat_interval = HEARTBEAT_INTERVAL

    def __repr__(self) -> str:
        return f"<vivace.App {self.name or '(unnamed)'} {self.app_id or ''}>"

    # -- decorators ----------------------------------------------------------------------------------
    def function(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        image: Any = None,
        schedule: Any = None,
        env: dict[str, str] | None = None,
        secrets: list[Any] | None = None,
        gpu: Any = None,
        serialized: bool = False,
        volumes: dict[str, Any] | None = None,
        cpu: Any = None,
        memory: Any = None,
        ephemeral_disk: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: int | None = None,
        retries: Any = None,
        timeout: float = 300,
        startup_timeout: float | None = None,
        name: str | None = None,
        is_generator: bool | None = None,
        cloud: str | None = None,
        region: Any = None,
        nonpreemptible: bool = False,
        enable_memory_snapshot: bool = False,
        block_network: bool = False,
        restrict_modal_access: bool = False,
        single_use_containers: bool = False,
        include_source: bool | None = None,
        **kwargs: Any,
    ) -> Callable[[Callable[..., Any]], Function]:
        """Turn a Python function into a ``Function`` that runs in containers."""
        if _warn_parentheses_missing is not None:
            raise exc.InvalidError("use @app.function() with parentheses")
        params.reject_unknown(kwargs, "@app.function()")
        from vivace.schedule import schedule_spec

        schedule_fields = schedule_spec(schedule)
        settings = _settings(locals())
        if name is not None and (not isinstance(name, str) or not name):
            raise exc.InvalidError("name must be a non-empty string")

        def wrap(f: Callable[..., Any]) -> Function:
            from vivace.cls import Cls

            if isinstance(f, (Function, Cls)):
                raise exc.InvalidError(
                    f"{f._function._name if isinstance(f, Cls) else f._name} is already a vivace function"
                )
            if not callable(f) or inspect.isclass(f):
                raise exc.InvalidError(
                    f"@app.function() decorates functions, not {type(f).__name__}; use @app.cls() for classes"
                )
            fname = name or f.__name__
            gen = (
                is_generator_function(f)
                if is_generator is None
                else params.flag("is_generator", is_generator)
            )
            fields = _modifier_fields(f, fname)
            if gen and fields.get("batch_max_size"):
                raise exc.InvalidError(f"{fname}: a batched function cannot be a generator")
            if schedule_fields is not None and _required_parameters(f):
                raise exc.InvalidError(
                    f"{fname} has a schedule, so the control plane calls it with no arguments: "
                    f"it must not require any ({', '.join(_required_parameters(f))})"
                )
            from vivace.web import web_settings

            web = web_settings(f)
            if web is not None and (gen or schedule_fields is not None or fields.get("batch_max_size")):
                raise exc.InvalidError(f"{fname}: a web endpoint cannot be a generator, scheduled or batched")
            spec = self._spec(
                f, fname, settings, is_generator=gen, schedule=schedule_fields, web=web, **fields
            )
            fn = Function(self, f, spec)
            fn._image = _image_arg(image)
            fn._storage = {"secrets": settings["secrets"], "volumes": settings["volumes"]}
            self.registered_functions[fname] = fn
            return fn

        return wrap

    def cls(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        image: Any = None,
        env: dict[str, str] | None = None,
        secrets: list[Any] | None = None,
        gpu: Any = None,
        serialized: bool = False,
        volumes: dict[str, Any] | None = None,
        cpu: Any = None,
        memory: Any = None,
        ephemeral_disk: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: int | None = None,
        retries: Any = None,
        timeout: float = 300,
        startup_timeout: float | None = None,
        cloud: str | None = None,
        region: Any = None,
        nonpreemptible: bool = False,
        enable_memory_snapshot: bool = False,
        block_network: bool = False,
        restrict_modal_access: bool = False,
        single_use_containers: bool = False,
        include_source: bool | None = None,
        **kwargs: Any,
    ) -> Callable[[type], Any]:
        """Turn a class into a ``Cls``: ``@enter`` runs once per container, ``@method``s take inputs."""
        if _warn_parentheses_missing is not None:
            raise exc.InvalidError("use @app.cls() with parentheses")
        for key in ("schedule", "name", "is_generator"):
            if key in kwargs:
                raise exc.InvalidError(f"@app.cls() has no {key!r} parameter (it applies to functions only)")
        params.reject_unknown(kwargs, "@app.cls()")
        settings = _settings(locals())

        def wrap(user_cls: type) -> Any:
            from vivace.cls import Cls, class_parameters, methods_of

            if not inspect.isclass(user_cls):
                raise exc.InvalidError(f"@app.cls() decorates classes, not {type(user_cls).__name__}")
            cname = user_cls.__name__
            if "__init__" in vars(user_cls):
                raise exc.InvalidError(
                    f"{cname} defines __init__: classes take their arguments as vivace.parameter() fields "
                    "(name: str = vivace.parameter()) and set up state in an @vivace.enter() method"
                )
            class_parameters(user_cls)  # validates the parameter fields
            methods = methods_of(user_cls)
            if not methods:
                raise exc.InvalidError(f"{cname} has no @vivace.method(): mark the methods callers may call")
            fields = _modifier_fields(user_cls, cname)
            batched = {
                m: getattr(getattr(user_cls, m), BATCHED)
                for m in methods
                if hasattr(getattr(user_cls, m), BATCHED)
            }
            if batched:
                if len(methods) > 1:
                    raise exc.InvalidError(
                        f"{cname} has a @vivace.batched() method, so it can have no other @vivace.method()"
                    )
                if fields.get("max_inputs", 1) > 1:
                    raise exc.InvalidError(f"{cname}: a class with a batched method cannot be concurrent")
                ((size, wait),) = batched.values()
                fields.update(batch_max_size=size, batch_wait_ms=wait)
            spec = self._spec(user_cls, cname, settings, is_class=True, methods=methods, **fields)
            fn = Function(self, user_cls, spec)
            fn._image = _image_arg(image)
            fn._storage = {"secrets": settings["secrets"], "volumes": settings["volumes"]}
            self.registered_functions[cname] = fn
            self.registered_classes[cname] = cls = Cls(self, user_cls, fn)
            return cls

        return wrap

    def _spec(self, obj: Any, fname: str, s: dict[str, Any], **fields: Any) -> FunctionSpec:
        if s["enable_memory_snapshot"]:
            params.warn_snapshot(fname)
        if "<locals>" in obj.__qualname__ and not s["serialized"]:
            raise exc.InvalidError(f"{fname} is defined inside another function: use serialized=True")
        if fname in self.registered_functions:
            raise exc.InvalidError(f"app already has a function named {fname!r}")
        if "#" in fname:
            raise exc.InvalidError(f"function names cannot contain '#': {fname!r}")
        spec_fields = {
            k: v for k, v in s.items() if k not in ("enable_memory_snapshot", "secrets", "volumes")
        }
        return FunctionSpec(
            name=fname, module=obj.__module__, qualname=obj.__qualname__, **spec_fields, **fields
        )

    def local_entrypoint(
        self, _warn_parentheses_missing: Any = None, *, name: str | None = None
    ) -> Callable[[Callable[..., Any]], LocalEntrypoint]:
        """Mark the function ``vivace run`` calls on your machine."""
        if _warn_parentheses_missing is not None:
            raise exc.InvalidError("use @app.local_entrypoint() with parentheses")

        def wrap(f: Callable[..., Any]) -> LocalEntrypoint:
            ep = LocalEntrypoint(self, f, name or f.__name__)
            self.local_entrypoints[ep.name] = ep
            return ep

        return wrap

    def include(self, other: App) -> App:
        """Add another app's functions to this one."""
        for fname, fn in other.registered_functions.items():
            if fname in self.registered_functions and self.registered_functions[fname] is not fn:
                raise exc.InvalidError(f"both apps have a function named {fname!r}")
            self.registered_functions[fname] = fn
            fn._app = self
        for cname, cls in other.registered_classes.items():
            self.registered_classes[cname] = cls
            cls._app = self
        return self

    # -- running -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def run(self, *, detach: bool = False, show_logs: bool | None = None) -> Iterator[App]:
        """Run the app ephemerally for the duration of the ``with`` block."""
        run_sync(self._start("detached" if detach else "ephemeral", show_logs))
        try:
            yield self
        finally:
            run_sync(self._finish(stop=not detach))

    def deploy(self, name: str | None = None) -> App:
        """Deploy the app under ``name``: its functions stay available to ``Function.from_name``."""
        if name is not None:
            self.name = name
        if not self.name:
            raise exc.InvalidError("a deployed app needs a name: App('name') or deploy(name=...)")
        run_sync(self._start("deployed", False))
        run_sync(self._finish(stop=False))
        self.version = run_sync(self._record_deploy())
        return self

    async def _record_deploy(self) -> int:
        """The deploy's functions, recorded as the app's next version (the ones it no longer has retire)."""
        fids = [fn._function_id for fn in self.registered_functions.values() if fn._function_id]
        res = await (await get_client()).post_json(
            f"/v1/apps/{self.app_id}/deployments", {"function_ids": fids}
        )
        return int(res["version"])

    def stop(self) -> None:
        """Stop the app and its containers."""
        if self.app_id is not None:
            run_sync(self._stop_remote())

    async def _stop_remote(self) -> None:
        await (await get_client()).post_json(f"/v1/apps/{self.app_id}/stop")

    async def _start(self, state: str, show_logs: bool | None) -> None:
        api = await get_client()
        uploaded: dict[str, str] = {}
        await self._build_images(uploaded)  # before the app exists: a long build holds nothing open
        res = await api.post_json("/v1/apps", {"name": self.name, "state": state})
        self.app_id = res["app_id"]
        self._heartbeat_interval = float(res.get("heartbeat_interval", HEARTBEAT_INTERVAL))
        for fn in self.registered_functions.values():
            await self._register(api, fn, uploaded)
        if state != "deployed":
            self._heartbeat = asyncio.create_task(self._heartbeat_loop())
        if show_logs if show_logs is not None else is_enabled():
            self._log_task = asyncio.create_task(self._follow_logs())

    async def _build_images(self, built: dict[str, str]) -> None:
        """Build (or find built) every image the app's functions use, once each, with live logs."""
        from vivace._sdk import images

        for fn in self.registered_functions.values():
            image = fn._image or self.image
            key = f"image:{id(image)}"
            if image is not None and key not in built:
                built[key] = await images.build(image, show_logs=is_enabled())

    async def _register(self, api: Any, fn: Function, uploaded: dict[str, str]) -> None:
        spec = fn.spec
        image = fn._image or self.image
        if image is not None:  # built by _build_images
            spec = _replace(spec, image_id=uploaded[f"image:{id(image)}"], image_mounts=image.mounts())
        secret_ids, mounts = await resolve_storage(
            self.app_id,
            [*self.secrets, *fn._storage["secrets"]],
            {**self.volumes, **fn._storage["volumes"]},
        )
        spec = _replace(spec, secrets=secret_ids, volumes=mounts)
        blobs: list[bytes] = []
        if spec.serialized:
            from vivace._sdk.serialization import serialize

            blobs.append(serialize(fn._vivace_raw_f))
            spec = _replace(spec, source_hash=None)
        else:
            raw = fn._vivace_raw_f
            module = sys.modules.get(spec.module)
            file = getattr(module, "__file__", None) if spec.module != "__main__" else main_file()
            if file is None and raw is not None:
                file = inspect.getsourcefile(raw)
            key = f"{spec.module}:{file}"
            if key not in uploaded:
                pkg = await asyncio.to_thread(package, spec.module, file)
                await api.request(
                    "PUT",
                    f"/v1/blobs/{pkg.sha256}",
                    content=pkg.data,
                    content_type="application/octet-stream",
                )
                uploaded[key] = f"{pkg.module}|{pkg.sha256}"
            module_name, sha = uploaded[key].split("|")
            spec = _replace(spec, module=module_name, source_hash=sha)
        resp = await api.request(
            "POST",
            f"/v1/apps/{self.app_id}/functions",
            content=frames.encode({"spec": spec.to_dict()}, blobs),
            content_type=frames.CONTENT_TYPE,
        )
        fn._hydrate(resp.json()["function_id"])

    async def _heartbeat_loop(self) -> None:
        api = await get_client()
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            with contextlib.suppress(exc.ServiceError):
                await api.post_json(f"/v1/apps/{self.app_id}/heartbeat", retry_for=5)

    async def _follow_logs(self) -> None:
        api = await get_client()
        while True:
            try:
                await self._print_logs(api, wait=10)
            except exc.Error:
                await asyncio.sleep(1)

    async def _print_logs(self, api: Any, wait: float) -> int:
        page = await api.get_json(
            "/v1/logs",
            # the user's output and what the platform must say; not the lifecycle lines (app logs has them)
            params={
                "app": self.app_id,
                "cursor": self._log_cursor,
                "wait": wait,
                "stream": "stdout,stderr,system",
            },
            timeout=wait + 30,
        )
        for line in page["lines"]:
            print_log(line)
        self._log_cursor = page["cursor"]
        return len(page["lines"])

    async def _drain_logs(self) -> None:
        """Print the lines containers wrote just before the run ended (workers ship them every 100 ms):
        read until the app has been quiet for 0.3 s, for at most 3 s."""
        api = await get_client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        with contextlib.suppress(exc.Error):
            while loop.time() < deadline:
                if not await self._print_logs(api, wait=0.3):
                    return

    async def _finish(self, *, stop: bool) -> None:
        if self._log_task is not None:
            self._log_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._log_task
            self._log_task = None
            await self._drain_logs()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if stop and self.app_id is not None:
            with contextlib.suppress(exc.Error):
                await (await get_client()).post_json(f"/v1/apps/{self.app_id}/stop", retry_for=10)

    @staticmethod
    def lookup(name: str, *, create_if_missing: bool = False) -> App:
        """The deployed app called ``name`` (created empty if ``create_if_missing``)."""
        if not isinstance(name, str) or not name:
            raise exc.InvalidError("App.lookup: name must be a non-empty string")
        params.flag("create_if_missing", create_if_missing)
        return run_sync(_lookup_app(name, create_if_missing))


async def _lookup_app(name: str, create_if_missing: bool) -> App:
    api = await get_client()
    try:
        app_id = (await api.get_json("/v1/apps/lookup", params={"name": name}))["app_id"]
    except exc.NotFoundError:
        if not create_if_missing:
            raise
        app_id = (await api.post_json("/v1/apps", {"name": name, "state": "deployed"}))["app_id"]
    app = App(name)
    app.app_id = app_id
    return app


async def resolve_storage(
    app_id: str | None, secrets: list[Any], volumes: dict[str, Any]
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Secret and Volume objects as the ids a function spec names (looked up or created now)."""
    ids: list[str] = []
    for secret in secrets:
        sid = await secret._resolve_for(app_id)
        if sid in ids:  # named twice: its later place decides which values win
            ids.remove(sid)
        ids.append(sid)
    mounts = {path: await vol._mount_ref() for path, vol in sorted(volumes.items())}
    return ids, mounts


def _image_arg(image: Any) -> Any:
    from vivace.image import Image

    if image is not None and not isinstance(image, Image):
        raise exc.InvalidError(f"image must be a vivace.Image, got {type(image).__name__}")
    return image


def _required_parameters(f: Callable[..., Any]) -> list[str]:
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _settings(p: dict[str, Any]) -> dict[str, Any]:
    """Validate the parameters ``@app.function()`` and ``@app.cls()`` share; return spec fields."""
    for key in ("cloud", "region", "nonpreemptible"):
        params.check_not_yet(key, p[key])
    cpu_req, cpu_lim = params.cpu(p["cpu"])
    mem_req, mem_lim = params.memory(p["memory"])
    gpu_choices = params.gpu(p["gpu"])
    for key in (
        "serialized",
        "single_use_containers",
        "enable_memory_snapshot",
        "block_network",
        "restrict_modal_access",
    ):
        params.flag(key, p[key])
    return {
        "serialized": p["serialized"],
        "cpu": cpu_req,
        "cpu_limit": cpu_lim,
        "memory": mem_req,
        "memory_limit": mem_lim,
        "gpu": None if gpu_choices is None else [dict(c) for c in gpu_choices],
        "timeout": params.timeout("timeout", p["timeout"], 300.0) or 300.0,
        "startup_timeout": params.timeout("startup_timeout", p["startup_timeout"], None),
        "retries": params.retries(p["retries"]).to_policy(),
        "single_use_containers": p["single_use_containers"],
        "block_network": p["block_network"],
        "restrict_modal_access": p["restrict_modal_access"],
        "env": params.env(p["env"]),
        # objects, not spec fields: the app resolves them to ids when it registers the function
        "secrets": params.secrets(p["secrets"]),
        "volumes": params.volumes(p["volumes"]),
        "enable_memory_snapshot": p["enable_memory_snapshot"],
        "ephemeral_disk": params.ephemeral_disk(p["ephemeral_disk"]),
        **params.autoscaler(
            p["min_containers"], p["max_containers"], p["buffer_containers"], p["scaledown_window"]
        ),
    }


def _modifier_fields(obj: Any, name: str) -> dict[str, Any]:
    """Spec fields from ``@concurrent`` and ``@batched`` marks on a function or class."""
    fields: dict[str, Any] = {}
    conc = getattr(obj, CONCURRENT, None)
    if conc is not None:
        fields.update(max_inputs=conc[0], target_inputs=conc[1])
    batch = getattr(obj, BATCHED, None) if not inspect.isclass(obj) else None
    if batch is not None:
        if conc is not None:
            raise exc.InvalidError(f"{name}: a function cannot be both @concurrent and @batched")
        fields.update(batch_max_size=batch[0], batch_wait_ms=batch[1])
    return fields


def _replace(spec: FunctionSpec, **changes: Any) -> FunctionSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)
