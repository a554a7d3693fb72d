"""A ``vivace run`` target's parameters as command-line options, as Modal's CLI makes them.

Each parameter ``num_items: int`` becomes ``--num-items`` (``bool`` becomes ``--flag/--no-flag``);
a parameter without a default is a required option. Supported annotations: ``str``, ``int``,
``float``, ``bool``, ``datetime.datetime`` (ISO 8601), ``typing.Literal[...]`` and ``X | None`` of
those; unannotated parameters take their default's type, or ``str``.
"""

from __future__ import annotations

import datetime
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import click

from vivace import exception as exc

SIMPLE_TYPES: dict[Any, click.ParamType[Any]] = {
    str: click.STRING,
    int: click.INT,
    float: click.FLOAT,
}


class IsoDateTime(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A ``datetime.datetime`` given in ISO 8601 form (``datetime.fromisoformat``)."""

    name = "datetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime.datetime):
            return value
        try:
            return datetime.datetime.fromisoformat(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not an ISO 8601 date and time, e.g. 2025-01-31T12:30:00", param, ctx)


class LiteralChoice(click.Choice):  # type: ignore[type-arg]
    """``typing.Literal[...]``: one of its values, given as text, converted back to the value."""

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = {str(v): v for v in values}
        super().__init__(list(self.values))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str) and value in self.values.values():
            return value
        return self.values[str(super().convert(value, param, ctx))]


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` / ``Optional[X]`` -> (X, True); anything else -> (annotation, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _param_type(annotation: Any) -> click.ParamType[Any] | type[bool] | None:
    """The click type for an annotation (``bool`` for a flag), or None if unsupported."""
    if annotation is bool:
        return bool
    if annotation in SIMPLE_TYPES:
        return SIMPLE_TYPES[annotation]
    if annotation is datetime.datetime:
        return IsoDateTime()
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        if values and all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            return LiteralChoice(values)
    return None


def _annotation_of(param: inspect.Parameter, hints: dict[str, Any]) -> Any:
    if param.name in hints:
        return hints[param.name]
    default = param.default
    if default is inspect.Parameter.empty or default is None:
        return str
    return type(default)


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception as err:  # NameError for a name imported only under TYPE_CHECKING, and friends
        name = getattr(func, "__qualname__", repr(func))
        raise exc.InvalidError(f"cannot resolve the type annotations of {name}: {err}") from err


def option_for(param: inspect.Parameter, hints: dict[str, Any]) -> click.Option:
    """The click option for one parameter; ``InvalidError`` if it cannot be one."""
    kinds = {
        param.VAR_POSITIONAL: "*args",
        param.VAR_KEYWORD: "**kwargs",
        param.POSITIONAL_ONLY: "positional-only",
    }
    if param.kind in kinds:
        raise exc.InvalidError(
            f"parameter {param.name!r} ({kinds[param.kind]}) cannot be a command-line option; "
            "use named parameters"
        )
    annotation = _annotation_of(param, hints)
    ptype = _param_type(_unwrap_optional(annotation)[0])
    if ptype is None:
        shown = annotation.__qualname__ if isinstance(annotation, type) else repr(annotation)
        raise exc.InvalidError(
            f"parameter {param.name!r} has type {shown}, which cannot be a command-line option "
            "(use str, int, float, bool, datetime.datetime or typing.Literal)"
        )
    flag = param.name.replace("_", "-")
    required = param.default is inspect.Parameter.empty
    default = None if required else param.default
    if ptype is bool:
        return click.Option(
            [f"--{flag}/--no-{flag}", param.name], default=default, required=required, show_default=True
        )
    assert isinstance(ptype, click.ParamType)
    return click.Option(
        [f"--{flag}", param.name], type=ptype, default=default, required=required, show_default=True
    )


def options_for(func: Callable[..., Any] | None) -> list[click.Option]:
    """One option per parameter of ``func`` (none for None); ``InvalidError`` for unsupported ones."""
    if func is None:
        return []
    hints = _type_hints(func)
    return [option_for(p, hints) for p in inspect.signature(func).parameters.values()]


def command_for(func: Callable[..., Any] | None, name: str) -> click.Command:
    """A click command whose options are ``func``'s parameters and whose help is its docstring."""
    doc = inspect.getdoc(func) if func is not None else None
    return click.Command(name, params=list(options_for(func)), help=doc, no_args_is_help=False)


def parse_args(func: Callable[..., Any] | None, args: Sequence[str], prog: str) -> dict[str, Any]:
    """Parse ``args`` against ``func``'s options; return the keyword arguments to call it with.

    ``prog`` names the command in usage lines (``vivace run app.py``). Bad input raises click's
    ``UsageError`` (exit 2 with the usage line); ``--help`` prints the options and raises
    ``click.exceptions.Exit``.
    """
    cmd = command_for(func, prog)
    with cmd.make_context(prog, list(args)) as ctx:
        for opt in cmd.params:
            if opt.required and ctx.params.get(opt.name or "") is None:
                raise click.MissingParameter(ctx=ctx, param=opt)  # click lets a required flag go missing
        return dict(ctx.params)
