"""Modifier decorators: ``@enter``, ``@exit``, ``@method``, ``@concurrent``, ``@batched``.

They only mark the decorated function (or class) with an attribute; ``@app.function()`` and
``@app.cls()`` read the marks when they build the function's spec, and the container runtime reads
them when it drives the class. A marked function stays a plain function, so ``self.other_method()``
inside a class works as in any Python class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from vivace.exception import InvalidError
from vivace.protocol.functions import MAX_BATCH_SIZE, MAX_BATCH_WAIT_MS

T = TypeVar("T")

ENTER = "_vivace_enter"  # {"snap": bool}
EXIT = "_vivace_exit"  # True
METHOD = "_vivace_method"  # {"is_generator": bool}
CONCURRENT = "_vivace_concurrent"  # (max_inputs, target_inputs)
BATCHED = "_vivace_batched"  # (max_batch_size, wait_ms)

MAX_CONCURRENT_INPUTS = 1000


def _no_bare(name: str, arg: Any) -> None:
    if arg is not None:
        raise InvalidError(f"use @vivace.{name}() with parentheses")


def _plain_function(name: str, f: Any) -> None:
    from vivace.cls import Cls
    from vivace.function import Function

    if isinstance(f, (Function, Cls)):
        raise InvalidError(
            f"@vivace.{name}() must be applied before @app.function()/@app.cls(): put it below them, "
            "next to the def"
        )
    if not callable(f):
        raise InvalidError(f"@vivace.{name}() decorates functions, not {type(f).__name__}")


def method(_warn_parentheses_missing: Any = None, *, is_generator: bool | None = None) -> Callable[[T], T]:
    """Mark a method of an ``@app.cls`` class as callable remotely (``obj.name.remote(...)``)."""
    _no_bare("method", _warn_parentheses_missing)
    if is_generator is not None and not isinstance(is_generator, bool):
        raise InvalidError(f"is_generator must be True or False, got {is_generator!r}")

    def wrap(f: T) -> T:
        _plain_function("method", f)
        gen = is_generator
        if gen is None:
            gen = inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f)
        setattr(f, METHOD, {"is_generator": gen})
        return f

    return wrap


def enter(_warn_parentheses_missing: Any = None, *, snap: bool = False) -> Callable[[T], T]:
    """Run this method once when a container starts, before it takes inputs (load models here).

    ``snap=True`` hooks run first; Vivace has no memory snapshots yet, so they run on every start.
    """
    _no_bare("enter", _warn_parentheses_missing)
    if not isinstance(snap, bool):
        raise InvalidError(f"snap must be True or False, got {snap!r}")

    def wrap(f: T) -> T:
        _plain_function("enter", f)
        setattr(f, ENTER, {"snap": snap})
        return f

    return wrap


def exit(_warn_parentheses_missing: Any = None) -> Callable[[T], T]:
    """Run this method when the container shuts down (scale-down, app stop, worker shutdown)."""
    _no_bare("exit", _warn_parentheses_missing)

    def wrap(f: T) -> T:
        _plain_function("exit", f)
        setattr(f, EXIT, True)
        return f

    return wrap


def concurrent(
    _warn_parentheses_missing: Any = None, *, max_inputs: int, target_inputs: int | None = None
) -> Callable[[T], T]:
    """Let one container serve up to ``max_inputs`` inputs at once.

    Async functions run them as tasks on one event loop, sync functions in threads. The autoscaler
    aims for ``target_inputs`` per container (default ``max_inputs``) and lets bursts go up to
    ``max_inputs`` before more containers are ready.
    """
    _no_bare("concurrent", _warn_parentheses_missing)
    max_i, target = concurrency_limits(max_inputs, target_inputs)

    def wrap(f: T) -> T:
        _plain_function("concurrent", f)
        setattr(f, CONCURRENT, (max_i, target))
        return f

    return wrap


def concurrency_limits(max_inputs: Any, target_inputs: Any) -> tuple[int, int]:
    if isinstance(max_inputs, bool) or not isinstance(max_inputs, int):
        raise InvalidError(f"max_inputs must be an integer, got {max_inputs!r}")
    if not 1 <= max_inputs <= MAX_CONCURRENT_INPUTS:
        raise InvalidError(f"max_inputs must be between 1 and {MAX_CONCURRENT_INPUTS}, got {max_inputs}")
    if target_inputs is None:
        return max_inputs, max_inputs
    if isinstance(target_inputs, bool) or not isinstance(target_inputs, int):
        raise InvalidError(f"target_inputs must be an integer, got {target_inputs!r}")
    if not 1 <= target_inputs <= max_inputs:
        raise InvalidError(
            f"target_inputs must be between 1 and max_inputs ({max_inputs}), got {target_inputs}"
        )
    return max_inputs, target_inputs


def batched(_warn_parentheses_missing: Any = None, *, max_batch_size: int, wait_ms: int) -> Callable[[T], T]:
    """Callers pass single items; the container calls the function with lists of up to
    ``max_batch_size`` of them, waiting at most ``wait_ms`` after the first for more. The function
    returns a list with one result per item, in order."""
    _no_bare("batched", _warn_parentheses_missing)
    size, wait = batch_limits(max_batch_size, wait_ms)

    def wrap(f: T) -> T:
        _plain_function("batched", f)
        if inspect.isclass(f):
            raise InvalidError("@vivace.batched() goes on a function or a method, not on a class")
        if inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f):
            raise InvalidError("a batched function cannot be a generator")
        sig = inspect.signature(f)  # type: ignore[arg-type]
        params = [p for p in sig.parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if params:
            raise InvalidError("a batched function takes named list parameters, not *args or **kwargs")
        setattr(f, BATCHED, (size, wait))
        return f

    return wrap


def batch_limits(max_batch_size: Any, wait_ms: Any) -> tuple[int, int]:
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
        raise InvalidError(f"max_batch_size must be an integer, got {max_batch_size!r}")
    if not 1 <= max_batch_size <= MAX_BATCH_SIZE:
        raise InvalidError(f"max_batch_size must be between 1 and {MAX_BATCH_SIZE}, got {max_batch_size}")
    if isinstance(wait_ms, bool) or not isinstance(wait_ms, int):
        raise InvalidError(f"wait_ms must be an integer number of milliseconds, got {wait_ms!r}")
    if not 0 <= wait_ms <= MAX_BATCH_WAIT_MS:
        raise InvalidError(f"wait_ms must be between 0 and {MAX_BATCH_WAIT_MS}, got {wait_ms}")
    return max_batch_size, wait_ms
