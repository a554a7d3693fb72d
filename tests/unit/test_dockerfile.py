"""The Dockerfile parser behind Image.from_dockerfile and Image.dockerfile_commands."""

import os
import re
from pathlib import Path

import pytest

from vivace._sdk.dockerfile import DockerfileError, Op, parse
from vivace.exception import InvalidError

pytestmark = pytest.mark.timeout(10)


def ops(text, context=None, **kw):
    return [(op.kind, op.value) for op in parse(text, context_dir=context, **kw)]


def commands(text, context=None, **kw):
    """dockerfile_commands: no FROM."""
    return ops(text, context, require_from=False, **kw)


def error(text, message, context=None, **kw):
    with pytest.raises(DockerfileError, match=message):
        parse(text, context_dir=context, **kw)


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def copied(context, text):
    """The single copy op of ``text`` (after FROM), with local paths relative to the context."""
    result = ops("FROM base\n" + text, context)
    assert [kind for kind, _ in result] == ["from", "copy"]
    root = os.path.realpath(context)
    return [(os.path.relpath(local, root), image) for local, image in result[1][1]]


# --------------------------------------------------------------------------- syntax


def test_error_is_an_invalid_error():
    assert issubclass(DockerfileError, InvalidError)


def test_from_and_line_numbers():
    text = "# a comment\n\nFROM python:3.11-slim\n  run echo hi\nRUN a \\\n  && b\nENV A=1\n"
    assert parse(text, context_dir=None) == [
        Op("from", "python:3.11-slim", 3),
        Op("run", "echo hi", 4),
        Op("run", "a   && b", 5),
        Op("env", {"A": "1"}, 7),
    ]


def test_from_as_name_and_case_insensitive_instructions():
    assert ops("from ubuntu:22.04 as build\nWorkDir /x") == [("from", "ubuntu:22.04"), ("workdir", "/x")]


def test_continuation_skips_comments_and_blank_lines_inside():
    text = "FROM b\nRUN apt-get update && \\\n# a comment\n\n    apt-get install -y \\\n      curl\n"
    assert ops(text) == [("from", "b"), ("run", "apt-get update &&     apt-get install -y       curl")]


def test_continuation_with_trailing_whitespace_after_backslash_and_at_end_of_file():
    assert ops("FROM b\nRUN a \\   \n b\nRUN c \\") == [("from", "b"), ("run", "a  b"), ("run", "c")]


def test_hash_inside_an_instruction_is_not_a_comment():
    assert ops("FROM b\nRUN echo 1 # kept") == [("from", "b"), ("run", "echo 1 # kept")]


def test_crlf_and_bom():
    assert ops("\ufeffFROM b\r\nRUN a \\\r\n b\r\n") == [("from", "b"), ("run", "a  b")]


def test_escape_directive_backtick():
    text = "# escape=`\nFROM b\nRUN echo a `\n  b\nWORKDIR C:\\app\nENV P=`$HOME"
    assert ops(text) == [
        ("from", "b"),
        ("run", "echo a   b"),
        ("workdir", "/C:\\app"),
        ("env", {"P": "$HOME"}),
    ]


def test_escape_directive_after_other_directives_and_case():
    assert ops("# syntax=docker/dockerfile:1\n# ESCAPE = `\nFROM b\nRUN a `\nb") == [
        ("from", "b"),
        ("run", "a b"),
    ]


def test_escape_directive_only_counts_at_the_top():
    text = "FROM b\n# escape=`\nRUN a \\\n b"
    assert ops(text) == [("from", "b"), ("run", "a  b")]
    text = "# a comment\n# escape=`\nFROM b\nRUN a \\\n b"
    assert ops(text) == [("from", "b"), ("run", "a  b")]


def test_escape_directive_errors():
    error("# escape=x\nFROM b", re.escape("Dockerfile line 1: invalid escape character 'x'"))
    error("# escape=`\n# escape=`\nFROM b", "line 2: the escape directive may only be given once")


def test_ignored_instructions_produce_nothing():
    text = 'FROM b\nLABEL a="1" b=2\nEXPOSE 8000/tcp\nMAINTAINER me <me@x>\nRUN x'
    assert ops(text) == [("from", "b"), ("run", "x")]


@pytest.mark.parametrize("instruction", ["SHELL", "ONBUILD", "HEALTHCHECK", "VOLUME", "STOPSIGNAL"])
def test_unsupported_instructions(instruction):
    error(f"FROM b\n{instruction.lower()} x", f"Dockerfile line 2: {instruction} is not supported")


def test_unknown_instruction():
    error("FROM b\nRUN apt-get install\n  curl", re.escape("line 3: unknown instruction 'curl'"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN", "RUN needs a command"),
        ("RUN []", "RUN exec form needs at least an executable"),
        ("COPY a", "COPY needs at least one source and a destination"),
        ("ENV A", "ENV A needs a value"),
        ("ENV", "ENV needs a name and a value"),
        ("ENV A=1 B", "ENV expects name=value pairs, got 'B'"),
        ("ENV =1", "ENV names cannot be blank"),
        ("WORKDIR", "WORKDIR needs a path"),
        ("WORKDIR $UNSET", "WORKDIR needs a path"),
        ("ARG", "ARG needs a name"),
        ("ARG my-arg=1", "ARG name 'my-arg' is not a valid variable name"),
        ("CMD", "CMD needs a command"),
        ("ENTRYPOINT", "ENTRYPOINT needs a command"),
        ("USER", "USER needs a user name"),
        ("USER a b", "USER expects one user"),
        ("LABEL", "LABEL needs an argument"),
        ("EXPOSE", "EXPOSE needs an argument"),
    ],
)
def test_missing_or_bad_arguments(line, message):
    error(f"FROM b\n{line}", f"Dockerfile line 2: {re.escape(message)}")


def test_source_names_the_text_in_errors():
    error(
        "RUN --mount=type=cache x",
        "^dockerfile_commands line 1: ",
        require_from=False,
        source="dockerfile_commands",
    )


# --------------------------------------------------------------------------- FROM


def test_from_rules():
    error("RUN x\nFROM b", "line 1: the first instruction must be FROM .* got RUN")
    error("LABEL a=b\nFROM b", "line 1: the first instruction must be FROM")
    error("FROM a AS x\nFROM b", "line 2: a second FROM: multi-stage builds are not supported")
    error("# only comments\n", "^Dockerfile: no FROM instruction")
    error("ARG A=1\n", "^Dockerfile: no FROM instruction")
    error("FROM --platform=linux/amd64 b", "line 1: FROM --platform is not supported")
    error("FROM a b", "FROM expects 'image' or 'image AS name'")
    error("ARG IMG\nFROM $IMG", re.escape("FROM image '$IMG' is empty after substitution"))


def test_dockerfile_commands_reject_from():
    error("RUN a\nFROM b", "line 2: dockerfile_commands cannot contain FROM", require_from=False)


def test_dockerfile_commands_without_from():
    assert commands("ARG V=1\nRUN echo $V\nENV X=$V") == [("run", "export V=1; echo $V"), ("env", {"X": "1"})]
    assert commands("") == []


# --------------------------------------------------------------------------- ARG and substitution


def test_arg_before_from_is_substituted_into_from_only():
    text = "ARG TAG=3.11\nARG BASE=python\nFROM ${BASE}:${TAG}-slim\nENV T=x$TAG\nRUN echo"
    assert ops(text) == [("from", "python:3.11-slim"), ("env", {"T": "x"}), ("run", "echo")]


def test_arg_redeclared_after_from_takes_the_global_value():
    text = "ARG TAG=3.11\nFROM b:$TAG\nARG TAG\nENV T=$TAG\nRUN echo"
    assert ops(text) == [("from", "b:3.11"), ("env", {"T": "3.11"}), ("run", "export TAG=3.11; echo")]


def test_build_args_override_defaults_and_undeclared_ones_are_ignored():
    text = "ARG TAG=3.11\nFROM b:$TAG\nARG V=default\nARG W\nARG U\nRUN echo\nENV X=$V/$W/$U/$NOPE"
    result = ops(text, build_args={"TAG": "3.12", "V": "given", "W": "w w", "NOT_DECLARED": "z"})
    assert result == [
        ("from", "b:3.12"),
        ("run", "export V=given; export W='w w'; echo"),
        ("env", {"X": "given/w w//"}),
    ]


def test_arg_default_is_substituted_and_several_per_line():
    text = 'FROM b\nENV HOME=/root\nARG A=$HOME/a B="x y"\nRUN run'
    assert ops(text) == [
        ("from", "b"),
        ("env", {"HOME": "/root"}),
        ("run", "export A=/root/a; export B='x y'; run"),
    ]


def test_args_are_not_persisted_as_env_and_env_wins_over_arg():
    text = "FROM b\nARG A=arg\nENV A=env\nENV B=$A\nRUN echo $A"
    assert ops(text) == [("from", "b"), ("env", {"A": "env"}), ("env", {"B": "env"}), ("run", "echo $A")]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$SET", "value"),
        ("${SET}", "value"),
        ("${SET}x", "valuex"),
        ("$SETx", ""),
        ("$UNSET", ""),
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${UNSET-dflt}", "dflt"),
        ("${SET:-dflt}", "value"),
        ("${UNSET:-$SET}", "value"),
        ("${UNSET:-${SET}-x}", "value-x"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET:+alt}", ""),
        ("${SET:?oops}", "value"),
        ("\\$SET", "$SET"),
        ("'$SET'", "$SET"),
        ('"$SET ${SET}"', "value value"),
        ('"a\\"b\\$c\\d"', 'a"b$c\\d'),
        ("a\\ b", "a b"),
        ("$", "$"),
        ("a$-b", "a$-b"),
        ("$1", ""),
        ("${UNSET:-a b}", "a b"),
    ],
)
def test_substitution_forms(expression, expected):
    text = f"FROM b\nARG SET=value\nARG EMPTY=\nARG UNSET\nENV X={expression}"
    assert ops(text)[-1] == ("env", {"X": expected})


def test_substitution_errors():
    error("FROM b\nENV X=${UNSET:?must be set}", re.escape("line 2: UNSET: must be set"))
    error("FROM b\nENV X=${UNSET?}", re.escape("line 2: UNSET: parameter not set"))
    error("FROM b\nENV X=${A#x}", re.escape("unsupported substitution in '${A#...'"))
    error("FROM b\nENV X=${A", re.escape("missing '}'"))
    error("FROM b\nENV X=${}", re.escape("'${' must be followed by a variable name"))
    error("FROM b\nENV X='abc", "unterminated single quote")
    error('FROM b\nENV X="abc', "unterminated double quote")


def test_run_is_not_substituted():
    assert ops("FROM b\nENV A=1\nRUN echo $A ${A:-x} '$A'") == [
        ("from", "b"),
        ("env", {"A": "1"}),
        ("run", "echo $A ${A:-x} '$A'"),
    ]


# --------------------------------------------------------------------------- ENV, WORKDIR, USER, RUN, CMD


def test_env_forms():
    text = (
        "FROM b\nENV A=1 B=\"two words\" C=three\\ words D='$A' E=$A\n"
        "ENV LEGACY value with  spaces\n"
        "ENV abc=hello\nENV abc=bye def=$abc\n"
    )
    assert ops(text) == [
        ("from", "b"),
        ("env", {"A": "1", "B": "two words", "C": "three words", "D": "$A", "E": ""}),
        ("env", {"LEGACY": "value with  spaces"}),
        ("env", {"abc": "hello"}),
        ("env", {"abc": "bye", "def": "hello"}),
    ]


def test_workdir_resolution():
    text = "FROM b\nWORKDIR app\nWORKDIR sub/\nWORKDIR ../other\nARG D=/opt\nWORKDIR $D//x/.\nWORKDIR /"
    assert ops(text) == [
        ("from", "b"),
        ("workdir", "/app"),
        ("workdir", "/app/sub"),
        ("workdir", "/app/other"),
        ("workdir", "/opt/x"),
        ("workdir", "/"),
    ]


def test_workdir_with_quotes_keeps_spaces():
    assert ops('FROM b\nWORKDIR "/my dir"')[-1] == ("workdir", "/my dir")


def test_user():
    text = "FROM b\nARG UID=1000\nUSER ${UID}:${GID:-100}\nUSER root"
    assert ops(text) == [("from", "b"), ("user", "1000:100"), ("user", "root")]


def test_run_exec_and_shell_forms():
    text = (
        'FROM b\nRUN ["python", "-c", "print(1)"]\nRUN [ -f /etc/x ] && echo yes\n'
        'RUN [ "$A" = 1 ] || true\nRUN echo "a  b"'
    )
    assert ops(text) == [
        ("from", "b"),
        ("run", "python -c 'print(1)'"),
        ("run", "[ -f /etc/x ] && echo yes"),
        ("run", '[ "$A" = 1 ] || true'),
        ("run", 'echo "a  b"'),
    ]


def test_run_exports_args_in_scope_before_the_command():
    text = 'FROM b\nARG A=1\nRUN one\nARG B="x \'y\'"\nARG C\nRUN ["two", "2"]'
    assert ops(text) == [
        ("from", "b"),
        ("run", "export A=1; one"),
        ("run", "export A=1; export B='x '\"'\"'y'\"'\"''; two 2"),
    ]


def test_entrypoint_and_cmd():
    text = (
        'FROM b\nENTRYPOINT ["python", "-m", "app"]\nCMD ["--port", "8000"]\nCMD python app.py $PORT\nCMD []'
    )
    assert ops(text) == [
        ("from", "b"),
        ("entrypoint", ["python", "-m", "app"]),
        ("cmd", ["--port", "8000"]),
        ("cmd", ["/bin/sh", "-c", "python app.py $PORT"]),
        ("cmd", []),
    ]
    assert ops("FROM b\nENTRYPOINT exec app")[-1] == ("entrypoint", ["/bin/sh", "-c", "exec app"])


@pytest.mark.parametrize(
    "line",
    ['RUN ["a", "b"', "CMD ['a']", 'ENTRYPOINT ["a" "b"]', 'COPY ["a", "b"'],
)
def test_malformed_json_exec_form(line):
    error(f"FROM b\n{line}", "line 2: .* has a malformed JSON exec form")


@pytest.mark.parametrize("line", ['CMD ["a", 1]', 'RUN [["a"]]', "ENTRYPOINT [null]"])
def test_exec_form_must_be_strings(line):
    error(f"FROM b\n{line}", "exec form must be a JSON array of strings")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN --mount=type=cache,target=/root/.cache pip install x", "RUN --mount is not supported"),
        ("RUN --network=none x", "RUN --network is not supported"),
        ("RUN --frobnicate x", "unknown flag --frobnicate for RUN"),
        ("COPY --from=build /a /b", "COPY --from is not supported (multi-stage"),
        ("COPY --chown=app:app a /b", "COPY --chown is not supported"),
        ("COPY --chmod=755 a /b", "COPY --chmod is not supported"),
        ("COPY --link a /b", "COPY --link is not supported"),
        ("ADD --chown=1 a /b", "ADD --chown is not supported"),
        ("ADD --checksum=sha256:00 a /b", "ADD --checksum is not supported"),
        ("COPY --nope a /b", "unknown flag --nope for COPY"),
    ],
)
def test_flags_are_rejected(line, message, tmp_path):
    error(f"FROM b\n{line}", f"Dockerfile line 2: {re.escape(message)}", tmp_path)


@pytest.mark.parametrize(
    "line",
    [
        "RUN <<EOF",
        "RUN cat <<-EOF > /x",
        "RUN python3 <<'PY'",
        'COPY <<"EOF" /etc/x',
        "ADD <<EOF /x",
    ],
)
def test_heredocs_are_rejected(line, tmp_path):
    error(f"FROM b\n{line}\necho\nEOF", "line 2: heredocs \\(<<EOF\\) are not supported", tmp_path)


def test_here_strings_and_shifts_are_not_heredocs():
    assert ops('FROM b\nRUN cat <<< "$x"\nRUN echo $((1<<2))')[1:] == [
        ("run", 'cat <<< "$x"'),
        ("run", "echo $((1<<2))"),
    ]


# --------------------------------------------------------------------------- COPY / ADD


@pytest.fixture
def context(tmp_path):
    return tree(
        tmp_path / "ctx",
        {
            "app.py": "a",
            "util.py": "u",
            "README.md": "r",
            "my file.txt": "m",
            "pkg/__init__.py": "",
            "pkg/core.py": "",
            "pkg/sub/deep.py": "",
            "pkg/sub/data.json": "",
            "data.tar.gz": "not really",
        },
    )


def test_copy_single_file_to_a_file_or_into_a_directory(context):
    assert copied(context, "COPY app.py /srv/main.py") == [("app.py", "/srv/main.py")]
    assert copied(context, "COPY app.py /srv/") == [("app.py", "/srv/app.py")]
    assert copied(context, "COPY app.py /srv/.") == [("app.py", "/srv/app.py")]


def copied_after_workdir(context, text):
    result = ops("FROM base\n" + text, context)
    return [(os.path.relpath(local, os.path.realpath(context)), image) for local, image in result[-1][1]]


def test_copy_relative_destination_uses_the_current_workdir(context):
    assert copied_after_workdir(context, "WORKDIR /w\nCOPY app.py .") == [("app.py", "/w/app.py")]
    assert copied_after_workdir(context, "WORKDIR /w\nCOPY pkg/core.py sub/") == [
        ("pkg/core.py", "/w/sub/core.py")
    ]
    assert copied_after_workdir(context, "WORKDIR /w\nCOPY app.py renamed.py") == [
        ("app.py", "/w/renamed.py")
    ]
    assert copied_after_workdir(context, "WORKDIR /w/x\nCOPY app.py ..") == [("app.py", "/w/app.py")]


def test_copy_local_paths_are_absolute(context):
    assert parse("FROM b\nCOPY app.py /a", context_dir=context)[1] == Op(
        "copy", ((os.path.join(os.path.realpath(context), "app.py"), "/a"),), 2
    )


def test_copy_directory_copies_its_contents_recursively_sorted(context):
    expected = [
        ("pkg/__init__.py", "/app/pkg/__init__.py"),
        ("pkg/core.py", "/app/pkg/core.py"),
        ("pkg/sub/data.json", "/app/pkg/sub/data.json"),
        ("pkg/sub/deep.py", "/app/pkg/sub/deep.py"),
    ]
    assert copied(context, "COPY pkg /app/pkg") == expected
    assert copied(context, "COPY pkg/ /app/pkg/") == expected
    assert copied(context, "COPY pkg/sub /x") == [
        ("pkg/sub/data.json", "/x/data.json"),
        ("pkg/sub/deep.py", "/x/deep.py"),
    ]


def test_copy_whole_context(context):
    result = copied(context, "COPY . /app")
    assert [image for _, image in result] == [
        "/app/README.md",
        "/app/app.py",
        "/app/data.tar.gz",
        "/app/my file.txt",
        "/app/pkg/__init__.py",
        "/app/pkg/core.py",
        "/app/pkg/sub/data.json",
        "/app/pkg/sub/deep.py",
        "/app/util.py",
    ]
    assert all(local == image.removeprefix("/app/") for local, image in result)


def test_copy_leading_slash_source_is_relative_to_the_context(context):
    assert copied(context, "COPY /app.py /x") == [("app.py", "/x")]


def test_copy_globs(context):
    assert copied(context, "COPY *.py /app/") == [("app.py", "/app/app.py"), ("util.py", "/app/util.py")]
    assert copied(context, "COPY pkg/*/d?ep.py /d/") == [("pkg/sub/deep.py", "/d/deep.py")]
    assert copied(context, "COPY [a]pp.py /one") == [("app.py", "/one")]
    assert copied(context, "COPY [!a]til.py /one") == [("util.py", "/one")]
    # a glob that matches a directory copies its contents
    assert copied(context, "COPY pk? /p/") == copied(context, "COPY pkg /p/")


def test_copy_multiple_sources(context):
    assert copied(context, "COPY app.py README.md pkg/sub /dst/") == [
        ("app.py", "/dst/app.py"),
        ("README.md", "/dst/README.md"),
        ("pkg/sub/data.json", "/dst/data.json"),
        ("pkg/sub/deep.py", "/dst/deep.py"),
    ]


def test_copy_later_source_wins_for_the_same_path(tmp_path):
    ctx = tree(tmp_path, {"a/f": "1", "b/f": "2"})
    assert copied(ctx, "COPY a b /x/") == [("b/f", "/x/f")]


def test_copy_multiple_sources_need_a_directory_destination(context):
    message = "COPY with more than one source file needs a destination directory ending in '/'"
    error("FROM b\nCOPY app.py util.py /dst", f"line 2: {re.escape(message)}", context)
    error("FROM b\nCOPY *.py /dst", re.escape(message), context)


def test_copy_json_form_and_substitution(context):
    assert copied(context, 'COPY ["my file.txt", "/in dir/"]') == [("my file.txt", "/in dir/my file.txt")]
    assert copied(context, 'COPY "my file.txt" /x') == [("my file.txt", "/x")]
    assert copied(context, "ARG F=app\nCOPY ${F}.py /srv/$F.py") == [("app.py", "/srv/app.py")]
    assert copied(context, 'ARG F=app\nCOPY ["$F.py", "/s/${F}"]') == [("app.py", "/s/app")]


def test_add_copies_local_files(context):
    assert copied(context, "ADD app.py pkg/sub /srv/") == [
        ("app.py", "/srv/app.py"),
        ("pkg/sub/data.json", "/srv/data.json"),
        ("pkg/sub/deep.py", "/srv/deep.py"),
    ]


@pytest.mark.parametrize("name", ["x.tar", "x.tar.gz", "x.tgz", "x.tar.bz2", "x.tar.xz", "X.TAR.ZST"])
def test_add_of_an_archive_is_rejected(tmp_path, name):
    ctx = tree(tmp_path, {name: ""})
    message = f"line 2: ADD of an archive is not supported; extract it first or use RUN ({name})"
    error(f"FROM b\nADD {name} /x/", re.escape(message), ctx)
    assert copied(ctx, f"COPY {name} /x/") == [(name, f"/x/{name}")]


@pytest.mark.parametrize(
    "url",
    ["https://example.com/a.tgz", "http://x/y", "git@github.com:a/b.git", "HTTPS://X/Y"],
)
def test_add_of_a_url_is_rejected(context, url):
    error(
        f"FROM b\nADD {url} /x/",
        "line 2: ADD of a URL is not supported; download it with RUN .*: " + re.escape(url),
        context,
    )
    error(f"FROM b\nADD {url} /x/", "ADD of a URL is not supported")


def test_copy_errors(context, tmp_path):
    error("FROM b\nCOPY app.py /x", re.escape("line 2: COPY needs a build context: pass context_dir="))
    error(
        "FROM b\nCOPY ../secret /x",
        re.escape("COPY source '../secret' is outside the build context"),
        context,
    )
    error("FROM b\nCOPY pkg/../../x /x", "is outside the build context", context)
    error("FROM b\nCOPY /../etc/passwd /x", "is outside the build context", context)
    error(
        "FROM b\nCOPY nope.py /x",
        re.escape("COPY source 'nope.py' matches nothing in the build context"),
        context,
    )
    error("FROM b\nCOPY *.rs /x/", re.escape("COPY source '*.rs' matches nothing"), context)
    error("FROM b\nCOPY '' /x/", "COPY source is empty", context)
    error("FROM b\nCOPY app.py ''", "COPY destination is empty", context)
    error("FROM b", "context_dir '.*missing' is not a directory", tmp_path / "missing")


def test_copy_symlinks(tmp_path):
    outside = tree(tmp_path / "outside", {"secret": "s", "dir/f": ""})
    ctx = tree(tmp_path / "ctx", {"real.txt": "r", "d/real2.txt": "", "target/t.txt": ""})
    (ctx / "link.txt").symlink_to("real.txt")
    (ctx / "d" / "link2.txt").symlink_to("../real.txt")
    assert copied(ctx, "COPY link.txt /x") == [("link.txt", "/x")]
    assert copied(ctx, "COPY d /d") == [("d/link2.txt", "/d/link2.txt"), ("d/real2.txt", "/d/real2.txt")]
    # a symlinked directory named as the source itself is followed
    (ctx / "dirlink").symlink_to("target")
    assert copied(ctx, "COPY dirlink /t") == [("dirlink/t.txt", "/t/t.txt")]

    (ctx / "d" / "dirlink").symlink_to("../target")
    error("FROM b\nCOPY d /d", "'d/dirlink' is a symlink to a directory, which is not supported", ctx)
    (ctx / "d" / "dirlink").unlink()

    (ctx / "escape").symlink_to(outside / "secret")
    error("FROM b\nCOPY escape /x", "'escape' is a symlink to .*secret, outside the build context", ctx)
    (ctx / "d" / "escape").symlink_to(outside / "secret")
    error("FROM b\nCOPY d /d", "'d/escape' is a symlink to .*, outside the build context", ctx)
    (ctx / "d" / "escape").unlink()
    (ctx / "outdir").symlink_to(outside / "dir")
    error("FROM b\nCOPY outdir/f /x", "outside the build context", ctx)

    (ctx / "d" / "broken").symlink_to("nowhere")
    error("FROM b\nCOPY d /d", "'d/broken' is a broken symlink", ctx)


def test_dockerignore(tmp_path):
    ctx = tree(
        tmp_path,
        {
            ".dockerignore": (
                "# comment\n\n/build\n**/*.pyc\n*.md\n!KEEP.md\nnode_modules\ndocs/**\n!docs/**/keep.txt\n"
                ".git\n"
            ),
            "app.py": "",
            "app.pyc": "",
            "pkg/mod.pyc": "",
            "pkg/mod.py": "",
            "README.md": "",
            "KEEP.md": "",
            "sub/NOTES.md": "",
            "build/out.bin": "",
            "node_modules/x/index.js": "",
            "docs/a/keep.txt": "",
            "docs/a/drop.txt": "",
            ".git/HEAD": "",
            "Dockerfile": "FROM b",
        },
    )
    assert [image for _, image in copied(ctx, "COPY . /app/")] == [
        "/app/.dockerignore",
        "/app/Dockerfile",
        "/app/KEEP.md",
        "/app/app.py",
        "/app/docs/a/keep.txt",
        "/app/pkg/mod.py",
        "/app/sub/NOTES.md",
    ]
    assert copied(ctx, "COPY *.md /d/") == [("KEEP.md", "/d/KEEP.md")]
    assert copied(ctx, "COPY Dockerfile /Dockerfile") == [("Dockerfile", "/Dockerfile")]
    error(
        "FROM b\nCOPY README.md /x",
        re.escape("COPY source 'README.md' matches nothing in the build context ") + ".*after .dockerignore",
        ctx,
    )
    # a directory whose every file is excluded produces no copy op
    assert ops("FROM b\nCOPY build /b", ctx) == [("from", "b")]


def test_dockerignore_without_exceptions_prunes_directories(tmp_path):
    ctx = tree(tmp_path, {".dockerignore": "skip\n", "skip/a": "", "keep/skip/b": "", "keep/c": ""})
    # patterns are anchored at the context root: keep/skip stays
    assert copied(ctx, "COPY keep /k") == [("keep/c", "/k/c"), ("keep/skip/b", "/k/skip/b")]
    assert [image for _, image in copied(ctx, "COPY . /")] == ["/.dockerignore", "/keep/c", "/keep/skip/b"]
