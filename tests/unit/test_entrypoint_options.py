"""A run target's signature as command-line options (vivace.cli.entrypoint), without a server."""

from __future__ import annotations

import datetime
from typing import Literal, Optional

import click
import pytest

from vivace.app import LocalEntrypoint
from vivace.cli.entrypoint import options_for, parse_args
from vivace.cli.runs import call_target, raw_function
from vivace.exception import InvalidError

pytestmark = pytest.mark.timeout(10)

PROG = "vivace run app.py"


def main(
    n: int,
    num_items: int = 3,
    name: str = "x",
    ratio: float = 0.5,
    loud: bool = False,
    when: datetime.datetime | None = None,
    mode: Literal["fast", "slow"] = "fast",
    level: Literal[1, 2] = 1,
    untyped=7,
    anything=None,
):
    """Do the thing."""


def test_each_parameter_becomes_a_dashed_option():
    flags = [opt.opts + opt.secondary_opts for opt in options_for(main)]
    assert flags == [
        ["--n"],
        ["--num-items"],
        ["--name"],
        ["--ratio"],
        ["--loud", "--no-loud"],
        ["--when"],
        ["--mode"],
        ["--level"],
        ["--untyped"],
        ["--anything"],
    ]
    required = [opt.name for opt in options_for(main) if opt.required]
    assert required == ["n"]


def test_defaults_fill_what_is_not_given():
    assert parse_args(main, ["--n", "1"], PROG) == {
        "n": 1,
        "num_items": 3,
        "name": "x",
        "ratio": 0.5,
        "loud": False,
        "when": None,
        "mode": "fast",
        "level": 1,
        "untyped": 7,
        "anything": None,
    }


def test_values_are_converted_to_the_annotated_types():
    args = "--n 2 --num-items 10 --name ab --ratio 1.5 --loud --when 2025-01-31T12:30:00+01:00"
    args += " --mode slow --level 2 --untyped 9 --anything 42"
    got = parse_args(main, args.split(), PROG)
    when = datetime.datetime(2025, 1, 31, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert got == {
        "n": 2,
        "num_items": 10,
        "name": "ab",
        "ratio": 1.5,
        "loud": True,
        "when": when,
        "mode": "slow",
        "level": 2,
        "untyped": 9,
        "anything": "42",
    }


def test_no_flag_turns_a_true_default_off():
    def f(color: bool = True, quiet: Optional[bool] = None):  # noqa: UP045
        pass

    assert parse_args(f, ["--no-color"], PROG) == {"color": False, "quiet": None}
    assert parse_args(f, ["--quiet"], PROG) == {"color": True, "quiet": True}


def test_string_annotations_are_resolved():
    # this module uses `from __future__ import annotations`: every annotation above is a string
    assert main.__annotations__["n"] == "int"
    assert parse_args(main, ["--n", "5"], PROG)["n"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "abc"], "'abc' is not a valid integer"),
        (["--n", "1", "--bogus"], "No such option"),
        ([], "Missing option '--n'"),
        (["--n", "1", "--mode", "warp"], "'warp' is not one of"),
        (["--n", "1", "--level", "3"], "'3' is not one of"),
        (["--n", "1", "--when", "yesterday"], "not an ISO 8601 date"),
        (["--n", "1", "extra"], "unexpected extra argument"),
    ],
)
def test_bad_input_is_a_usage_error(args, message):
    with pytest.raises(click.UsageError) as info:
        parse_args(main, args, PROG)
    assert info.value.exit_code == 2
    assert message in info.value.format_message()
    assert info.value.ctx is not None and info.value.ctx.command_path == PROG


def test_a_required_flag_must_be_given():
    def f(force: bool):
        pass

    assert parse_args(f, ["--force"], PROG) == {"force": True}
    assert parse_args(f, ["--no-force"], PROG) == {"force": False}
    with pytest.raises(click.MissingParameter):
        parse_args(f, [], PROG)


def test_help_lists_the_options_and_the_docstring(capsys):
    with pytest.raises(click.exceptions.Exit) as info:
        parse_args(main, ["--help"], PROG)
    assert info.value.exit_code == 0
    out = capsys.readouterr().out
    assert f"Usage: {PROG} [OPTIONS]" in out and "Do the thing." in out
    assert "--num-items INTEGER" in out and "--loud / --no-loud" in out and "[fast|slow]" in out


def test_no_function_means_no_options():
    assert options_for(None) == []
    assert parse_args(None, [], PROG) == {}
    with pytest.raises(click.UsageError):
        parse_args(None, ["--x", "1"], PROG)


def star_args(*items: str):
    pass


def star_kwargs(**extra: int):
    pass


def positional_only(a: int, /):
    pass


def unsupported(path: list[str]):
    pass


def unresolvable(x: NoSuchType):  # noqa: F821
    pass


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (star_args, "'items' (*args)"),
        (star_kwargs, "'extra' (**kwargs)"),
        (positional_only, "'a' (positional-only)"),
        (unsupported, "'path' has type list[str]"),
        (unresolvable, "NoSuchType"),
    ],
)
def test_parameters_that_cannot_be_options_are_refused(func, message):
    with pytest.raises(InvalidError) as info:
        options_for(func)
    assert message in str(info.value)


def test_local_entrypoints_are_called_with_the_parsed_options():
    seen = []

    def ep(n: int, name: str = "x"):
        seen.append((n, name))

    target = LocalEntrypoint(None, ep, "ep")  # type: ignore[arg-type]
    assert raw_function(target) is ep
    call_target(target, parse_args(raw_function(target), ["--n", "4"], PROG))
    assert seen == [(4, "x")]


def test_async_local_entrypoints_run_to_completion():
    seen = []

    async def ep(n: int):
        seen.append(n * 2)

    call_target(LocalEntrypoint(None, ep, "ep"), {"n": 21})  # type: ignore[arg-type]
    assert seen == [42]
