"""``@app.cls`` classes: ``Cls`` (the decorated class), ``Obj`` (an instance with parameters) and
``parameter()``.

A class is registered as one function whose inputs name a method. An instance with parameter values,
or a class handle with other options, is a *variant* of that function: the control plane creates it on
first use (idempotently, by content) and it gets its own containers and autoscaling, because
``@enter`` may load different things for different parameters.
"""

from __future__ import annotations

import base64
import inspect
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vivace import decorators
from vivace import exception as exc
from vivace.function import Function

if TYPE_CHECKING:
    from vivace.app import App

PARAM_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "bytes": bytes}
_MISSING = object()


class _Parameter:
    """A class field set by the caller: ``size: int = vivace.parameter(default=1)``."""

    def __init__(self, default: Any, init: bool) -> None:
        self.default = default
        self.init = init

    def __repr__(self) -> str:
        return (
            "vivace.parameter()"
            if self.default is _MISSING
            else f"vivace.parameter(default={self.default!r})"
        )


def parameter(*, default: Any = _MISSING, init: bool = True) -> Any:
    """Declare a class parameter (str, int, bool or bytes); callers pass it as a keyword argument."""
    if not isinstance(init, bool):
        raise exc.InvalidError(f"init must be True or False, got {init!r}")
    return _Parameter(default, init)


def class_parameters(user_cls: type) -> dict[str, tuple[type, Any]]:
    """The class's parameters: name -> (type, default or _MISSING). Raises InvalidError on misuse."""
    hints = dict(getattr(user_cls, "__annotations__", {}))
    out: dict[str, tuple[type, Any]] = {}
    for name, value in vars(user_cls).items():
        if not isinstance(value, _Parameter):
            continue
        raw = hints.get(name)
        if raw is None:
            raise exc.InvalidError(f"{user_cls.__name__}.{name}: a parameter needs a type annotation")
        key = raw if isinstance(raw, str) else getattr(raw, "__name__", repr(raw))
        kind = PARAM_TYPES.get(key)
        if kind is None or (not isinstance(raw, str) and raw is not kind):
            raise exc.InvalidError(
                f"{user_cls.__name__}.{name}: parameters are str, int, bool or bytes, not {key}"
            )
        if value.default is not _MISSING:
            _check_value(user_cls.__name__, name, kind, value.default)
        if value.init:
            out[name] = (kind, value.default)
    return out


def _check_value(cls_name: str, name: str, kind: type, value: Any) -> None:
    ok = isinstance(value, kind) and (kind is not int or not isinstance(value, bool))
    if not ok:
        raise exc.InvalidError(
            f"{cls_name}: parameter {name!r} is {kind.__name__}, got {type(value).__name__} {value!r}"
        )


def encode_params(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v for k, v in values.items()
    }


def decode_params(values: dict[str, Any]) -> dict[str, Any]:
    return {k: base64.b64decode(v["b64"]) if isinstance(v, dict) else v for k, v in values.items()}


def lifecycle(user_cls: type, mark: str) -> list[Callable[..., Any]]:
    """The class's functions marked ``mark`` (enter/exit), in definition order, base classes first."""
    seen: dict[str, Callable[..., Any]] = {}
    for klass in reversed(user_cls.__mro__):
        for name, value in vars(klass).items():
            if callable(value) and hasattr(value, mark):
                seen[name] = value
    return list(seen.values())


def method_info(value: Any) -> dict[str, Any] | None:
    """What ``@method`` recorded on ``value``; a ``@batched`` method is a method too (as in Modal)."""
    if not callable(value):
        return None
    from vivace.web import web_settings

    info = getattr(value, decorators.METHOD, None)
    web = web_settings(value)
    if web is not None:  # a web endpoint is a method too (as in Modal); requests are its inputs
        return {"is_generator": False, "web": web}
    if info is None and hasattr(value, decorators.BATCHED):
        return {"is_generator": False}
    return dict(info) if info is not None else None


def methods_of(user_cls: type) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for klass in reversed(user_cls.__mro__):
        for name, value in vars(klass).items():
            info = method_info(value)
            if info is not None:
                out[name] = info
    return out


def new_instance(user_cls: type, params: dict[str, Any]) -> Any:
    """Make an instance without calling ``__init__`` and set its parameters (defaults filled in)."""
    obj: Any = user_cls.__new__(user_cls)  # type: ignore[call-overload]
    for name, (_, default) in class_parameters(user_cls).items():
        setattr(obj, name, params.get(name, default))
    return obj


class Cls:
    """A class decorated with ``@app.cls()``; call it with its parameters to get an ``Obj``."""

    def __init__(
        self,
        app: App | None,
        user_cls: type | None,
        function: Function,
        *,
        options: dict[str, Any] | None = None,
    ) -> None:
        self._app = app
        self._vivace_raw_f = user_cls  # the runtime imports this attribute to find the class
        self._function = function
        self._options = dict(options or {})
        self._services: dict[str, Function] = {}  # variant handles by content, shared by copies
        self._params = class_parameters(user_cls) if user_cls is not None else None
        if user_cls is not None:
            self.__doc__ = user_cls.__doc__
            self.__name__ = user_cls.__name__
            self.__qualname__ = user_cls.__qualname__
            self.__module__ = user_cls.__module__

    def __repr__(self) -> str:
        return f"<vivace.Cls {self._function._name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Obj:
        if args:
            raise exc.InvalidError(
                f"{self._function._name}() takes its parameters as keywords (name=value), not positionally"
            )
        values = self._bind(kwargs)
        return Obj(self, values)

    def _bind(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._params is None:  # looked up by name: the control plane checks the types
            for name, value in kwargs.items():
                if not isinstance(value, (str, int, bool, bytes)):
                    raise exc.InvalidError(f"parameter {name!r} must be str, int, bool or bytes")
            return dict(kwargs)
        cls_name = self._function._name
        unknown = sorted(set(kwargs) - set(self._params))
        if unknown:
            known = ", ".join(sorted(self._params)) or "none"
            raise exc.InvalidError(
                f"{cls_name}: unknown parameter(s) {', '.join(unknown)} (parameters: {known})"
            )
        values: dict[str, Any] = {}
        for name, (kind, default) in self._params.items():
            if name in kwargs:
                _check_value(cls_name, name, kind, kwargs[name])
                values[name] = kwargs[name]
            elif default is _MISSING:
                raise exc.InvalidError(f"{cls_name}: missing parameter {name!r}")
        return values

    # -- variants -------------------------------------------------------------------------------------
    def with_options(self, **options: Any) -> Cls:
        """The same class with other resources or scaling; instances of it scale on their own."""
        from vivace._sdk.params import spec_options

        return self._with(spec_options(options, "Cls.with_options()"))

    def with_concurrency(self, *, max_inputs: int, target_inputs: int | None = None) -> Cls:
        """The same class serving up to ``max_inputs`` inputs at once per container."""
        max_i, target = decorators.concurrency_limits(max_inputs, target_inputs)
        return self._with(
            {"max_inputs": max_i, "target_inputs": target, "batch_max_size": 0, "batch_wait_ms": 0}
        )

    def with_batching(self, *, max_batch_size: int, wait_ms: int) -> Cls:
        """The same class with its batched method grouping up to ``max_batch_size`` inputs."""
        size, wait = decorators.batch_limits(max_batch_size, wait_ms)
        return self._with(
            {"batch_max_size": size, "batch_wait_ms": wait, "max_inputs": 1, "target_inputs": 1}
        )

    def _with(self, changes: dict[str, Any]) -> Cls:
        new = Cls.__new__(Cls)
        new.__dict__.update(self.__dict__)
        new._options = {**self._options, **changes}
        return new

    @staticmethod
    def from_name(app_name: str, name: str) -> Cls:
        """A handle to a class of a deployed app, looked up on first use."""
        return Cls(None, None, Function.from_name(app_name, name))

    def hydrate(self) -> Cls:
        self._function.hydrate()
        return self


class Obj:
    """An instance of an ``@app.cls`` class: its methods are ``Function`` handles (``.remote()``...)."""

    def __init__(self, cls: Cls, params: dict[str, Any]) -> None:
        self._cls = cls
        self._params = params
        self._local_instance: Any = None
        variant: dict[str, Any] | None = None
        if params or cls._options:
            variant = {"params": encode_params(params), "options": cls._options}
        base = cls._function
        if variant is None:
            self._service = base
        else:  # one handle per parameter and option set: its variant is created once per app run
            key = json.dumps(variant, sort_keys=True, default=lambda o: f"object:{id(o)}")
            if key not in cls._services:
                cls._services[key] = Function(base._app, None, None, base=base, variant=variant)
            self._service = cls._services[key]
        self._methods: dict[str, Function] = {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"<vivace.Obj {self._cls._function._name}({args})>"

    def __getattr__(self, name: str) -> Function:
        if name.startswith("_"):
            raise AttributeError(name)
        user_cls = self._cls._vivace_raw_f
        if user_cls is not None and method_info(getattr(user_cls, name, None)) is None:
            raise AttributeError(f"{user_cls.__name__} has no method {name!r} marked with @vivace.method()")
        if name not in self._methods:
            self._methods[name] = Function(
                self._cls._app, None, None, base=self._service, method=name, local=self._local
            )
        return self._methods[name]

    def _local(self) -> Any:
        """The instance ``.local()`` calls run on: made once, with its ``@enter`` hooks run."""
        user_cls = self._cls._vivace_raw_f
        if user_cls is None:
            raise exc.InvalidError("this class was looked up by name; its code is not available here")
        if self._local_instance is None:
            obj = new_instance(user_cls, self._params)
            run_hooks(obj, user_cls, decorators.ENTER)
            self._local_instance = obj
        return self._local_instance

    def update_autoscaler(self, **settings: Any) -> None:
        """Change the autoscaler settings of this instance's containers."""
        self._service.update_autoscaler(**settings)


def run_hooks(obj: Any, user_cls: type, mark: str) -> None:
    """Run the ``@enter`` (snap ones first) or ``@exit`` hooks of an instance; async ones too."""
    hooks = lifecycle(user_cls, mark)
    if mark == decorators.ENTER:
        hooks.sort(key=lambda f: not getattr(f, decorators.ENTER)["snap"])
    for hook in hooks:
        result = hook(obj)
        if inspect.iscoroutine(result):
            import asyncio

            asyncio.run(result)
