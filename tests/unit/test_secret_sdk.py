"""``vivace.Secret`` on the client: input validation, .env parsing, and values never shown or pickled."""

from __future__ import annotations

import pickle
from pathlib import Path

import cloudpickle
import pytest

import vivace
from vivace import exception as exc
from vivace._sdk import dotenv
from vivace.protocol import secrets as rules

VALUE = "hunter2-secret-value"


def test_from_dict_keeps_values_and_drops_none_as_modal_does() -> None:
    s = vivace.Secret.from_dict({"A": "1", "B": None, "EMPTY": ""})
    assert s._env == {"A": "1", "EMPTY": ""} and s.name is None
    assert vivace.Secret.from_dict()._env == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"1X": "v"}, "invalid secret key '1X'"),
        ({"A B": "v"}, "environment variable name"),
        ({"VIVACE_X": "v"}, "reserved"),
        ({"Modal_X": "v"}, "reserved"),
        ({"K": 5}, "must be a string, not int"),
        ({"K": b"bytes"}, "must be a string, not bytes"),
        ({3: "v"}, "keys must be strings"),
        ({f"K{i}": "v" for i in range(rules.MAX_KEYS + 1)}, "at most 1,000 keys"),
        ({"K": "x" * rules.MAX_BYTES}, "the limit is 65,536"),
        ({"K": "\udc80"}, "not valid UTF-8"),
    ],
)
def test_bad_dicts_are_refused_naming_keys_never_values(env: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(exc.InvalidError, match=message) as err:
        vivace.Secret.from_dict(env)
    assert "xxxxxxxx" not in str(err.value)


def test_a_bad_value_never_appears_in_the_error() -> None:
    with pytest.raises(exc.InvalidError) as err:
        vivace.Secret.from_dict({"GOOD": VALUE, "BAD": VALUE + "\x00"})
    assert "BAD" in str(err.value) and VALUE not in str(err.value)


def test_from_dict_takes_only_a_mapping() -> None:
    with pytest.raises(exc.InvalidError, match="dict of str to str"):
        vivace.Secret.from_dict([("A", "1")])  # type: ignore[arg-type]


def test_from_local_environ_reads_the_keys_and_names_missing_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_ONE", "1")
    monkeypatch.setenv("SECRET_TWO", "2")
    monkeypatch.delenv("SECRET_MISSING_A", raising=False)
    monkeypatch.delenv("SECRET_MISSING_B", raising=False)
    assert vivace.Secret.from_local_environ(["SECRET_ONE", "SECRET_TWO"])._env == {
        "SECRET_ONE": "1",
        "SECRET_TWO": "2",
    }
    with pytest.raises(exc.InvalidError, match="SECRET_MISSING_A, SECRET_MISSING_B"):
        vivace.Secret.from_local_environ(["SECRET_ONE", "SECRET_MISSING_A", "SECRET_MISSING_B"])
    with pytest.raises(exc.InvalidError, match="list of variable names"):
        vivace.Secret.from_local_environ("SECRET_ONE")  # type: ignore[arg-type]


def test_inside_a_container_local_sources_read_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the app's module is imported again in its containers, where neither the variables nor the file exist
    monkeypatch.setenv("VIVACE_SOCKET", "/nonexistent")
    monkeypatch.delenv("NOT_HERE", raising=False)
    assert vivace.Secret.from_local_environ(["NOT_HERE"])._env == {}
    assert vivace.Secret.from_dotenv(tmp_path / "missing")._env == {}


def test_from_name_validates_the_name_and_required_keys() -> None:
    s = vivace.Secret.from_name("openai", required_keys=["OPENAI_API_KEY"])
    assert s.name == "openai" and s._required == ["OPENAI_API_KEY"]
    with pytest.raises(exc.InvalidError, match="invalid name"):
        vivace.Secret.from_name("bad name")
    with pytest.raises(exc.InvalidError, match="invalid secret key"):
        vivace.Secret.from_name("ok", required_keys=["not-a-key"])
    with pytest.raises(exc.InvalidError):
        vivace.Secret.from_name("ok", required_keys="KEY")


def test_repr_and_pickles_never_carry_values() -> None:
    inline = vivace.Secret.from_dict({"TOKEN": VALUE})
    assert VALUE not in repr(inline) and repr(inline) == "Secret(<inline, 1 key>)"
    assert repr(vivace.Secret.from_name("db")) == "Secret.from_name('db')"
    for dump in (pickle.dumps, cloudpickle.dumps):
        data = dump(inline)
        assert VALUE.encode() not in data and b"TOKEN" not in data
    inline._ids["ap-1"] = "st-abc"
    back = pickle.loads(pickle.dumps(inline))
    assert back._env is None and back._ids == {"ap-1": "st-abc"}
    named = pickle.loads(pickle.dumps(vivace.Secret.from_name("db", required_keys=["K"])))
    assert named.name == "db" and named._required == ["K"]


def test_modal_name_and_objects_interface() -> None:
    assert "Secret" in vivace.__all__
    with pytest.raises(exc.InvalidError, match="invalid name"):
        vivace.Secret.objects.create("bad name", {"K": "v"})
    with pytest.raises(exc.InvalidError, match="reserved"):
        vivace.Secret.objects.create("ok", {"VIVACE_K": "v"})


# -- .env files ---------------------------------------------------------------------------------------


def test_dotenv_parsing() -> None:
    text = (
        "\ufeff# a comment\n"
        "\n"
        "PLAIN=value\n"
        "export EXPORTED=yes\n"
        "  SPACED = padded value   \n"
        "INLINE=before # a comment\n"
        "HASH=no#comment\n"
        "SINGLE='literal \\n $HOME # not a comment'\n"
        'DOUBLE="line1\\nline2 \\"quoted\\" \\\\"\n'
        'MULTI="first\n'
        'second"\n'
        "EMPTY=\n"
        "EQUALS=a=b=c\n"
        "PLAIN=overridden\n"
        "AFTER='x' # fine\n"
    )
    assert dotenv.parse(text) == {
        "PLAIN": "overridden",
        "EXPORTED": "yes",
        "SPACED": "padded value",
        "INLINE": "before",
        "HASH": "no#comment",
        "SINGLE": "literal \\n $HOME # not a comment",
        "DOUBLE": 'line1\nline2 "quoted" \\',
        "MULTI": "first\nsecond",
        "EMPTY": "",
        "EQUALS": "a=b=c",
        "AFTER": "x",
    }


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("GOOD=1\nno equals opensesame\n", 2),
        ("A=1\nB='opensesame\nC=3\n", 2),
        ('A="x" opensesame\n', 1),
        ("A=1\n\n=opensesame\n", 3),
    ],
)
def test_dotenv_errors_give_the_line_not_the_value(text: str, line: int) -> None:
    with pytest.raises(exc.InvalidError, match=f"^app.env, line {line}: ") as err:
        dotenv.parse(text, "app.env")
    assert "opensesame" not in str(err.value)


def test_from_dotenv_finds_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("A=root\n")
    sub = tmp_path / "pkg" / "deep"
    sub.mkdir(parents=True)
    (tmp_path / "pkg" / "app.py").write_text("")
    (tmp_path / "prod.env").write_text("A=prod\n")
    assert vivace.Secret.from_dotenv(tmp_path)._env == {"A": "root"}
    assert vivace.Secret.from_dotenv(tmp_path / "prod.env")._env == {"A": "prod"}  # the file itself
    assert vivace.Secret.from_dotenv(tmp_path / "pkg" / "app.py")._env == {"A": "root"}  # __file__, upward
    assert vivace.Secret.from_dotenv(sub, filename="prod.env")._env == {"A": "prod"}
    monkeypatch.chdir(sub)
    assert vivace.Secret.from_dotenv()._env == {"A": "root"}


def test_from_dotenv_errors(tmp_path: Path) -> None:
    with pytest.raises(exc.InvalidError, match="no such file or directory"):
        vivace.Secret.from_dotenv(tmp_path / "absent")
    with pytest.raises(exc.InvalidError, match=r"no \.env\.missing file"):
        vivace.Secret.from_dotenv(tmp_path, filename=".env.missing")
    (tmp_path / "bad.env").write_text("VIVACE_TOKEN=x\n")
    with pytest.raises(exc.InvalidError, match="reserved"):
        vivace.Secret.from_dotenv(tmp_path / "bad.env")
