"""``Function`` and ``FunctionCall``: the handles users call remote code through."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from vivace import exception as exc
from vivace import runtime_api
from vivace._sdk import invocation
from vivace._sdk.connection import get_client
from vivace._sync import iter_async, iter_sync, run_async, run_sync, synchronized, twin
from vivace.protocol.calls import CallKind
from vivace.protocol.functions import FunctionSpec

if TYPE_CHECKING:
    from vivace.app import App


class Function:
    """A function that runs in containers. Created by ``@app.function()``.

    Call it with ``.remote()`` (in a container), ``.local()`` (in this process), ``.map()``,
    ``.spawn()`` and friends; each has an ``.aio`` async form.
    """

    def __init__(
        self,
        app: App | None,
        raw_f: Callable[..., Any] | None,
        spec: FunctionSpec | None,
        function_id: str | None = None,
        *,
        base: Function | None = None,
        variant: dict[str, Any] | None = None,
        method: str | None = None,
        lookup: tuple[str, str] | None = None,
        local: Callable[[], Any] | None = None,
    ) -> None:
        self._app = app
        self._vivace_raw_f = raw_f
        self._spec = spec
        self._function_id = function_id
        # a handle derived from another: bound class parameters or options (a variant the control plane
        # creates on first use), or one method of a class
        self._base = base
        self._variant = variant
        self._method = method
        self._variant_ids: dict[str, tuple[str, FunctionSpec]] = {}  # base function id -> variant
        self._lookup = lookup  # (app name, function name): resolved on first use
        self._local = local  # for a method: returns the local instance whose method .local() runs
        self._image: Any = None  # the Image its containers start from (None: the app's, or the base)
        # Secret and Volume objects (the spec names their ids once the app registers the function)
        self._storage: dict[str, Any] = {"secrets": [], "volumes": {}}
        self._name: str = (
            spec.name if spec is not None else (lookup[1] if lookup else base._name if base else "?")
        )
        if method is not None:
            self._name = f"{self._name}.{method}"
        if raw_f is not None:
            self.__doc__ = raw_f.__doc__
            self.__name__ = getattr(raw_f, "__name__", self._name)
            self.__qualname__ = getattr(raw_f, "__qualname__", self._name)
            self.__module__ = getattr(raw_f, "__module__", "")

    def __repr__(self) -> str:
        return f"<vivace.Function {self._name} {self._function_id or '(not running)'}>"

    @property
    def spec(self) -> FunctionSpec:
        """The function's settings (for a handle looked up by name: once it has been resolved)."""
        if self._spec is None:
            if self._base is not None:
                return self._base.spec
            self.hydrate()
        assert self._spec is not None
        return self._spec

    @property
    def object_id(self) -> str:
        if self._function_id is not None and self._base is None:
            return self._function_id
        if self._base is None and self._lookup is None:
            raise exc.InvalidError(
                f"function {self._name!r} has no id yet: call it inside `with app.run():` or from `vivace run`"
            )
        return run_sync(self._resolve())

    def hydrate(self) -> Function:
        """Look the function up now instead of on first use (raises ``NotFoundError`` if missing)."""
        run_sync(self._resolve())
        return self

    def _app_id(self) -> str | None:
        """The id of the app this handle belongs to, where known (its run, or the serving container's)."""
        if self._app is not None and self._app.app_id is not None:
            return self._app.app_id
        if not runtime_api.is_local():
            from vivace.runtime import context

            return context.app_id or None
        return None

    def _hydrate(self, function_id: str) -> None:
        self._function_id = function_id

    async def _resolve(self) -> str:
        """This handle's function id: looked up, or its variant created, on first use."""
        if self._base is not None:
            base_id = await self._base._resolve()
            if self._variant is None:  # a method of the base function
                return base_id
            if base_id not in self._variant_ids:
                data = await (await get_client()).post_json(
                    f"/v1/functions/{base_id}/variants",
                    await _variant_body(self._variant, self._app_id()),
                    retry_for=10,
                )
                self._variant_ids[base_id] = (data["function_id"], FunctionSpec.from_dict(data["spec"]))
            fid, spec = self._variant_ids[base_id]
            self._spec = spec
            return fid
        if self._function_id is None:
            query = _in_container_lookup(self)
            if self._lookup is not None:
                query = {"app": self._lookup[0], "name": self._lookup[1]}
            if query is None:
                raise exc.InvalidError(
                    f"function {self._name!r} has no id yet: call it inside `with app.run():` or from "
                    "`vivace run`"
                )
            data = await (await get_client()).get_json("/v1/functions/lookup", params=query)
            self._spec = FunctionSpec.from_dict(data["spec"])
            self._function_id = data["function_id"]
        return self._function_id

    def _is_generator(self) -> bool:
        spec = self._spec or (self._base.spec if self._base is not None else self.spec)
        if self._method is None:
            return spec.is_generator
        info = spec.methods.get(self._method)
        if info is None:
            raise exc.NotFoundError(f"{spec.name} has no method {self._method!r}")
        return bool(info["is_generator"])

    # -- local ---------------------------------------------------------------------------------------
    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function in this process."""
        if self._local is not None:
            return getattr(self._local(), self._method or "")(*args, **kwargs)
        if self._vivace_raw_f is None:
            raise exc.InvalidError(f"{self._name!r} was looked up by name; its code is not available here")
        return self._vivace_raw_f(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.local(*args, **kwargs)

    # -- remote --------------------------------------------------------------------------------------
    async def _target(self, how: str) -> str:
        """Resolve the function id and refuse calling a generator with anything but remote_gen."""
        fid = await self._resolve()
        if self._is_generator():
            raise exc.InvalidError(f"{self._name!r} is a generator: use .remote_gen() instead of .{how}()")
        web = self._web_settings()
        if web is not None and web["kind"] != "fastapi":
            raise exc.InvalidError(
                f"{self._name!r} serves a web app: send it HTTP requests at .get_web_url(), not .{how}()"
            )
        return fid

    def _web_settings(self) -> dict[str, Any] | None:
        spec = self._spec or (self._base.spec if self._base is not None else self.spec)
        if self._method is None:
            return spec.web
        return (spec.methods.get(self._method) or {}).get("web")

    @synchronized
    async def get_web_url(self) -> str | None:
        """The URL of this function's web endpoint (``None`` if it has none)."""
        root = self
        while root._base is not None:  # a method or variant: the function that serves the URL
            root = root._base
        fid = await root._resolve()
        data = await (await get_client()).get_json(f"/v1/functions/{fid}/web")
        url = data["urls"].get(self._method or "")
        return str(url) if url is not None else None

    @synchronized
    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function in a container and return its result."""
        fid = await self._target("remote")
        return await invocation.call_one(await get_client(), fid, args, kwargs, self._method)

    def remote_gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Run a generator function remotely; yields its items as they arrive."""
        return iter_sync(self._gen(args, kwargs))

    async def _gen(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        fid = await self._resolve()
        if not self._is_generator():
            raise exc.InvalidError(f"{self._name!r} is not a generator: use .remote()")
        async for item in invocation.gen_items(await get_client(), fid, args, kwargs, self._method):
            yield item

    @synchronized
    async def spawn(self, *args: Any, **kwargs: Any) -> FunctionCall:
        """Start the function without waiting; returns a ``FunctionCall``."""
        fid = await self._target("spawn")
        call_id = invocation.new_call_id()
        await invocation.send_inputs(
            await get_client(),
            call_id,
            fid,
            CallKind.SPAWN,
            [0],
            [invocation.encode_args(args, kwargs, self._method)],
            1,
        )
        return FunctionCall(call_id)

    # -- map family ----------------------------------------------------------------------------------
    def map(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Run the function over the zipped iterables in parallel; yields results."""
        argsets = ((a, kwargs or {}) for a in zip(*iterables, strict=False))
        return self._map_sync(argsets, order_outputs, return_exceptions)

    def starmap(
        self,
        iterable: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Like ``map`` but each item is a tuple of positional arguments."""
        argsets = ((tuple(a), kwargs or {}) for a in iterable)
        return self._map_sync(argsets, order_outputs, return_exceptions)

    def for_each(
        self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None, ignore_exceptions: bool = False
    ) -> None:
        """Run the function over the inputs and discard the results."""
        for _ in self.map(
            *iterables, kwargs=kwargs, order_outputs=False, return_exceptions=ignore_exceptions
        ):
            pass

    def spawn_map(self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None) -> FunctionCall:
        """Submit a map without waiting for results; returns the ``FunctionCall``."""
        argsets = [(a, kwargs or {}) for a in zip(*iterables, strict=False)]
        return run_sync(self._spawn_map(argsets))

    async def _spawn_map(self, argsets: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> FunctionCall:
        fid = await self._target("spawn_map")
        api = await get_client()
        call_id = invocation.new_call_id()
        await api.post_json("/v1/calls", {"call_id": call_id, "function_id": fid, "kind": "map"})
        await invocation._upload_all(api, call_id, fid, argsets, CallKind.MAP, [], self._method)
        return FunctionCall(call_id)

    def _map_sync(
        self,
        argsets: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
        order_outputs: bool,
        return_exceptions: bool,
    ) -> Iterator[Any]:
        from vivace._sdk.output import progress

        with progress(self._name) as bar:
            for batch in iter_sync(self._map_batches(argsets, order_outputs)):
                bar(len(batch))
                for o in batch:
                    if o.ok or return_exceptions:
                        yield o.value
                    else:
                        raise o.value

    async def _map_batches(
        self, argsets: Iterable[tuple[tuple[Any, ...], dict[str, Any]]], order_outputs: bool
    ) -> AsyncIterator[list[invocation.Outcome]]:
        fid = await self._target("map")
        async for batch in invocation.map_outcomes(
            await get_client(), fid, argsets, order_outputs, method=self._method
        ):
            yield batch

    async def _outcomes_aio(
        self,
        argsets: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
        order_outputs: bool,
        return_exceptions: bool,
    ) -> AsyncIterator[Any]:
        async for batch in iter_async(self._map_batches(argsets, order_outputs)):
            for o in batch:
                if o.ok or return_exceptions:
                    yield o.value
                else:
                    raise o.value

    def _map_aio(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        argsets = ((a, kwargs or {}) for a in zip(*iterables, strict=False))
        return self._outcomes_aio(argsets, order_outputs, return_exceptions)

    def _starmap_aio(
        self,
        iterable: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        argsets = ((tuple(a), kwargs or {}) for a in iterable)
        return self._outcomes_aio(argsets, order_outputs, return_exceptions)

    async def _for_each_aio(
        self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None, ignore_exceptions: bool = False
    ) -> None:
        argsets = ((a, kwargs or {}) for a in zip(*iterables, strict=False))
        async for _ in self._outcomes_aio(argsets, False, ignore_exceptions):
            pass

    async def _spawn_map_aio(
        self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None
    ) -> FunctionCall:
        argsets = [(a, kwargs or {}) for a in zip(*iterables, strict=False)]
        return await run_async(self._spawn_map(argsets))

    def _remote_gen_aio(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return iter_async(self._gen(args, kwargs))

    map = twin(map, _map_aio)  # type: ignore[assignment]
    starmap = twin(starmap, _starmap_aio)  # type: ignore[assignment]
    for_each = twin(for_each, _for_each_aio)  # type: ignore[assignment]
    spawn_map = twin(spawn_map, _spawn_map_aio)  # type: ignore[assignment]
    remote_gen = twin(remote_gen, _remote_gen_aio)  # type: ignore[assignment]

    # -- autoscaler and stats -----------------------------------------------------------------------
    @synchronized
    async def update_autoscaler(
        self,
        *,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: int | None = None,
    ) -> None:
        """Change autoscaler settings of a running function."""
        changes = {
            k: v
            for k, v in {
                "min_containers": min_containers,
                "max_containers": max_containers,
                "buffer_containers": buffer_containers,
                "scaledown_window": scaledown_window,
            }.items()
            if v is not None
        }
        fid = await self._resolve()
        await (await get_client()).post_json(f"/v1/functions/{fid}/autoscaler", changes)

    @synchronized
    async def get_current_stats(self) -> FunctionStats:
        """Backlog and number of running containers."""
        fid = await self._resolve()
        data = await (await get_client()).get_json(f"/v1/functions/{fid}/stats")
        return FunctionStats(data["backlog"], data["num_total_runners"])

    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise exc.InvalidError("Function.call was renamed (as in Modal): use .remote() (or .remote_gen())")

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise exc.InvalidError("Function.submit was renamed (as in Modal): use .spawn()")

    def with_options(self, **options: Any) -> Function:
        """A handle to the same function with other resources or scaling; it scales on its own."""
        if self._method is not None:
            raise exc.InvalidError("with_options applies to a function or a class, not to one method")
        from vivace._sdk.params import spec_options

        changes = spec_options(options, "with_options()")
        return Function(self._app, self._vivace_raw_f, None, base=self, variant={"options": changes})

    @staticmethod
    def from_name(app_name: str, name: str) -> Function:
        """A handle to a function of a deployed app, looked up on first use (``NotFoundError`` then)."""
        for what, value in (("app_name", app_name), ("name", name)):
            if not isinstance(value, str) or not value:
                raise exc.InvalidError(f"Function.from_name: {what} must be a non-empty string")
        return Function(None, None, None, lookup=(app_name, name))


async def _variant_body(variant: dict[str, Any], app_id: str | None) -> dict[str, Any]:
    """A variant's options with its Secret and Volume objects resolved to ids."""
    options = variant.get("options") or {}
    if "secrets" not in options and "volumes" not in options:
        return variant
    from vivace.app import resolve_storage

    ids, mounts = await resolve_storage(app_id, options.get("secrets", []), options.get("volumes", {}))
    resolved = {**options}
    if "secrets" in options:
        resolved["secrets"] = ids
    if "volumes" in options:
        resolved["volumes"] = mounts
    return {**variant, "options": resolved}


def _in_container_lookup(fn: Function) -> dict[str, str] | None:
    """Inside a container, a function of the app being served is found by the container's app id."""
    if fn._app is None or runtime_api.is_local():
        return None
    from vivace.runtime import context

    return {"app_id": context.app_id, "name": fn._name} if context.app_id else None


class FunctionStats:
    def __init__(self, backlog: int, num_total_runners: int) -> None:
        self.backlog = backlog
        self.num_total_runners = num_total_runners

    def __repr__(self) -> str:
        return f"FunctionStats(backlog={self.backlog}, num_total_runners={self.num_total_runners})"


class FunctionCall:
    """A handle to a spawned call; rebuild it anywhere with ``FunctionCall.from_id``."""

    def __init__(self, call_id: str) -> None:
        self.object_id = call_id

    def __repr__(self) -> str:
        return f"<vivace.FunctionCall {self.object_id}>"

    @staticmethod
    def from_id(call_id: str) -> FunctionCall:
        if not isinstance(call_id, str) or not call_id.startswith("fc-"):
            raise exc.InvalidError(f"not a function call id: {call_id!r}")
        return FunctionCall(call_id)

    @synchronized
    async def get(self, timeout: float | None = None) -> Any:
        """Wait for the result (raises ``TimeoutError`` if it is not ready within ``timeout`` seconds)."""
        api = await get_client()
        results = []
        stream = invocation.OutputStream(api, self.object_id)
        outs, header = await stream.page(0)
        if header.get("total") not in (None, 1):  # a spawned map: every result, in order
            async for batch in invocation.map_outcomes_existing(api, self.object_id, timeout):
                results.extend(batch)
            return [o.value if o.ok else _raise(o.value) for o in results]
        for part, o in outs:
            if part == -1:
                return o.value if o.ok else _raise(o.value)
        return await invocation.wait_one(api, self.object_id, timeout)

    @synchronized
    async def cancel(self, terminate_containers: bool = False) -> None:
        """Cancel the call: pending inputs never run; running ones are interrupted."""
        await (await get_client()).post_json(
            f"/v1/calls/{self.object_id}/cancel", {"terminate_containers": terminate_containers}
        )

    @staticmethod
    def gather(*calls: FunctionCall) -> list[Any]:
        """Wait for several calls; returns their results in order."""
        return run_sync(_gather(calls))


async def _gather(calls: tuple[FunctionCall, ...]) -> list[Any]:
    import asyncio

    return list(await asyncio.gather(*(run_async(c.get.aio()) for c in calls)))


def _raise(err: BaseException) -> Any:
    raise err


def is_generator_function(f: Callable[..., Any]) -> bool:
    return inspect.isgeneratorfunction(f)
