"""Dockerfile text → a list of plain operations, for ``Image.from_dockerfile`` and
``Image.dockerfile_commands``.

Vivace does not run Docker: an image is a chain of steps (a base image, shell commands, environment,
files). This module maps the part of the Dockerfile language that has an exact equivalent in those steps
onto :class:`Op` values, and rejects everything else with a :class:`DockerfileError` that names the line.
Rejecting is deliberate: a Dockerfile must never quietly build into something other than what Docker
would have built.

Supported
    * Syntax: ``#`` comment lines, blank lines, line continuations, the ``# escape=`` parser directive
      (backslash or backtick, at the top only), case-insensitive instruction names, leading whitespace.
    * ``FROM image [AS name]`` (one stage; ARGs declared before it are substituted into it), ``ARG``,
      ``ENV`` (``k=v`` pairs and the legacy ``ENV k v``), ``RUN`` (shell and JSON exec form), ``WORKDIR``,
      ``COPY``/``ADD`` of files of the build context (globs, directories, ``.dockerignore``),
      ``ENTRYPOINT``, ``CMD``, ``USER``.
    * ``LABEL``, ``EXPOSE`` and ``MAINTAINER`` are accepted and produce nothing: they change neither the
      files nor the process of a container.
    * Substitution as Docker does it, in FROM, ARG defaults, ENV, WORKDIR, COPY/ADD and USER: ``$VAR``,
      ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:+alt}``, ``${VAR+alt}``,
      ``${VAR:?message}``, escaping with ``\\$``; single quotes are literal, double quotes group words.
      An undefined variable expands to the empty string. ENV values win over ARG values of the same name.
      RUN is not substituted (the shell does that): ARG values in scope are exported in front of it.
    * COPY: a leading ``/`` in a source means the context's root, as in Docker. A directory source copies
      its contents; ops list files only (empty directories are not represented; a COPY that yields no
      file produces no op). Symbolic links to files are followed when they resolve inside the context.

Rejected, each with the reason in the message
    * A second FROM (multi-stage builds), ``FROM --platform``, ``COPY --from``: one image comes from one
      base, built for the worker's platform.
    * ``RUN --mount``/``--network``/``--security``: BuildKit features with no equivalent here.
    * ``COPY``/``ADD`` ``--chown``/``--chmod``/``--link``/…: ownership and modes cannot be honoured at
      copy time, and silently ignoring them would surprise.
    * ``ADD`` of a URL or of a tar archive (Docker would download or extract it), heredocs (``<<EOF``).
    * ``SHELL``, ``ONBUILD``, ``HEALTHCHECK``, ``VOLUME``, ``STOPSIGNAL``, unknown instructions.
    * COPY sources outside the context (``..``, symlinks leading out), matching nothing, or a COPY
      without a context directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vivace import exception as exc
from vivace._sdk.dockerfile_context import _URL, _absolute, _Context, _Problem

__all__ = ["DockerfileError", "Op", "parse"]


class DockerfileError(exc.InvalidError):
    """The Dockerfile text is malformed or uses something Vivace cannot build."""


@dataclass(frozen=True)
class Op:
    """One image step. ``kind`` is one of from, run, env, workdir, copy, entrypoint, cmd, user.

    ``value`` by kind: from: image reference (str); run: shell command (str); env: dict[str, str];
    workdir: absolute path (str); copy: tuple of (absolute local file, absolute path in the image);
    entrypoint/cmd: argv (list[str]); user: str. ``line`` is the instruction's 1-based line number.
    """

    kind: str
    value: Any
    line: int


# --------------------------------------------------------------------------- lines


_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = frozenset({"escape", "syntax", "check"})


def _escape_directive(lines: list[str]) -> str:
    """The escape character set by a ``# escape=`` directive at the top (default backslash)."""
    escape: str | None = None
    for number, line in enumerate(lines, start=1):
        match = _DIRECTIVE.match(line.lstrip())
        if match is None or match[1].lower() not in _KNOWN_DIRECTIVES:
            break  # directives end at the first line that is not one
        if match[1].lower() != "escape":
            continue
        if escape is not None:
            raise _Problem("the escape directive may only be given once", number)
        if match[2] not in ("\\", "`"):
            raise _Problem(f"invalid escape character {match[2]!r}: use \\ or `", number)
        escape = match[2]
    return escape or "\\"


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _continued(line: str, escape: str) -> tuple[str, bool]:
    """(line without a trailing escape, whether the instruction continues on the next line)."""
    stripped = line.rstrip(" \t")
    if stripped.endswith(escape):
        return stripped[: -len(escape)], True
    return line, False


def _logical_lines(lines: list[str], escape: str) -> list[tuple[int, str]]:
    """Join continuation lines; drop comments and blank lines. Returns (first line number, text)."""
    result: list[tuple[int, str]] = []
    index = 0
    while index < len(lines):
        first = lines[index].lstrip()
        index += 1
        if not first or _is_comment(first):
            continue
        start = index
        text, more = _continued(first, escape)
        while more and index < len(lines):
            line = lines[index]
            index += 1
            if not line.strip() or _is_comment(line):
                continue  # Docker skips these inside a continued instruction
            part, more = _continued(line, escape)
            text += part
        if text.strip():
            result.append((start, text.strip()))
    return result


# --------------------------------------------------------------------------- words and substitution


_NAME_START = frozenset(string.ascii_letters + "_")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_DIGITS = frozenset(string.digits)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Words:
    """Collects the words of a lexed string; unquoted whitespace separates words when splitting."""

    def __init__(self, split: bool) -> None:
        self.split = split
        self.words: list[str] = []
        self.buffer: list[str] = []
        self.started = False

    def add_raw(self, text: str) -> None:
        self.buffer.append(text)
        self.started = True

    def add_unquoted(self, text: str) -> None:
        if not self.split:
            self.add_raw(text)
            return
        for char in text:
            if char.isspace():
                self.flush()
            else:
                self.add_raw(char)

    def flush(self) -> None:
        if self.started:
            self.words.append("".join(self.buffer))
        self.buffer, self.started = [], False

    def result(self) -> list[str]:
        self.flush()
        return self.words


class _Lexer:
    """Docker's word processing: quote removal, escapes and variable substitution in one pass, so a
    substituted value is never re-read as quotes or escapes."""

    def __init__(self, text: str, variables: Mapping[str, str], escape: str, *, quotes: bool = True) -> None:
        self.text = text
        self.pos = 0
        self.variables = variables
        self.escape = escape
        self.quotes = quotes

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def scan(self, *, split: bool, stop: str = "") -> list[str]:
        words = _Words(split)
        while True:
            char = self._peek()
            if not char:
                if stop:
                    raise _Problem(f"missing {stop!r} in a ${{...}} substitution")
                return words.result()
            self.pos += 1
            if char == stop:
                return words.result()
            if char == self.escape:
                escaped = self._peek()
                if escaped:
                    self.pos += 1
                    words.add_raw(escaped)
            elif char == "'" and self.quotes:
                words.add_raw(self._single_quoted())
            elif char == '"' and self.quotes:
                words.add_raw(self._double_quoted())
            elif char == "$":
                words.add_unquoted(self._dollar())
            else:
                words.add_unquoted(char)

    def _single_quoted(self) -> str:
        end = self.text.find("'", self.pos)
        if end < 0:
            raise _Problem("unterminated single quote")
        text, self.pos = self.text[self.pos : end], end + 1
        return text

    def _double_quoted(self) -> str:
        parts: list[str] = []
        while True:
            char = self._peek()
            if not char:
                raise _Problem("unterminated double quote")
            self.pos += 1
            if char == '"':
                return "".join(parts)
            if char == self.escape:
                escaped = self._peek()
                if escaped in ('"', "$", self.escape):
                    self.pos += 1
                    parts.append(escaped)
                elif escaped:
                    parts.append(char)  # other escapes stay as written, as in the shell
            elif char == "$":
                parts.append(self._dollar())
            else:
                parts.append(char)

    def _name(self) -> str:
        start = self.pos
        if self._peek() in _DIGITS:
            self.pos += 1
        elif self._peek() in _NAME_START:
            while self._peek() in _NAME_CHARS:
                self.pos += 1
        return self.text[start : self.pos]

    def _dollar(self) -> str:
        if self._peek() == "{":
            self.pos += 1
            return self._braced()
        name = self._name()
        return self.variables.get(name, "") if name else "$"

    def _braced(self) -> str:
        name = self._name()
        if not name:
            raise _Problem("bad substitution: '${' must be followed by a variable name")
        operator = self._peek()
        if operator == "}":
            self.pos += 1
            return self.variables.get(name, "")
        colon = operator == ":"
        if colon:
            self.pos += 1
            operator = self._peek()
        if not operator:
            raise _Problem("missing '}' in a ${...} substitution")
        if operator not in "-+?":
            raise _Problem(
                f"unsupported substitution in '${{{name}{':' if colon else ''}{operator}...': "
                "supported forms are ${VAR}, ${VAR:-default}, ${VAR:+alt}, ${VAR:?message} "
                "(and the same without ':')"
            )
        self.pos += 1
        word = "".join(self.scan(split=False, stop="}"))
        value = self.variables.get(name, "")
        usable = name in self.variables and (value != "" or not colon)
        if operator == "-":
            return value if usable else word
        if operator == "+":
            return word if usable else ""
        if usable:
            return value
        raise _Problem(f"{name}: {word or 'parameter not set'}")


def _split_raw(text: str, escape: str) -> list[str]:
    """Split on whitespace outside quotes and ``${...}``, keeping quotes and escapes (each word is
    processed later)."""
    words: list[str] = []
    buffer: list[str] = []
    quote = ""
    braces = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == escape and quote != "'" and index + 1 < len(text):
            buffer.append(text[index : index + 2])
            index += 2
            continue
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif text.startswith("${", index):
            braces += 1
        elif char == "}" and braces:
            braces -= 1
        elif char.isspace() and not braces:
            if buffer:
                words.append("".join(buffer))
                buffer = []
            index += 1
            continue
        buffer.append(char)
        index += 1
    if buffer:
        words.append("".join(buffer))
    return words


def _exec_form(args: str, instruction: str) -> list[str] | None:
    """The JSON array of an exec form, or None for the shell form.

    As in Docker, text that is not valid JSON is the shell form (``RUN [ -f x ] && ...`` is a test
    command), except where it plainly meant to be JSON: ``["`` or ``['`` right after the bracket.
    """
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except json.JSONDecodeError as error:
        if re.match(r"\[['\"]", args):
            raise _Problem(
                f"{instruction} has a malformed JSON exec form ({error.msg}); "
                'write it as ["executable", "arg", ...] with double quotes'
            ) from None
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Problem(f"{instruction} exec form must be a JSON array of strings")
    return value


# --------------------------------------------------------------------------- build context


_IGNORED = frozenset({"LABEL", "EXPOSE", "MAINTAINER"})
_UNSUPPORTED = {
    "SHELL": "RUN always uses /bin/sh -c; call another shell explicitly in the command",
    "ONBUILD": "there are no downstream Docker builds to trigger",
    "HEALTHCHECK": "containers are not health-checked by Docker here",
    "VOLUME": "attach a Volume to the function instead",
    "STOPSIGNAL": "containers are stopped by the platform",
}
_FLAG_HINTS = {
    "platform": "images are built for the worker's platform",
    "from": "multi-stage builds are not supported",
    "chown": "files are copied as root with their local permission bits; use RUN chown afterwards",
    "chmod": "files keep their local permission bits; use RUN chmod afterwards",
    "mount": "build mounts are not available; COPY the files in first",
}
_KNOWN_FLAGS = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"mount", "network", "security", "device"}),
    "COPY": frozenset({"from", "chown", "chmod", "link", "parents", "exclude"}),
    "ADD": frozenset({"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude", "unpack"}),
}
_HEREDOC = re.compile(r"(?<!<)<<(?!<)-?\s*([\"']?)[A-Za-z_][A-Za-z0-9_]*\1")


def _reject_flags(instruction: str, args: str) -> None:
    """Every flag of FROM/RUN/COPY/ADD changes what is built, and none is supported."""
    match = re.match(r"--([^\s=]*)", args)
    if match is None:
        return
    flag = match[1]
    if flag not in _KNOWN_FLAGS[instruction]:
        raise _Problem(f"unknown flag --{flag} for {instruction}")
    hint = _FLAG_HINTS.get(flag)
    raise _Problem(f"{instruction} --{flag} is not supported" + (f" ({hint})" if hint else ""))


def _reject_heredoc(instruction: str, args: str) -> None:
    if _HEREDOC.search(args):
        raise _Problem(f"heredocs (<<EOF) are not supported in {instruction}; write the lines with RUN")


class _Parser:
    def __init__(
        self,
        *,
        context_dir: str | Path | None,
        build_args: Mapping[str, str] | None,
        require_from: bool,
        source: str,
    ) -> None:
        self.source = source
        self.context_dir = context_dir
        self.context: _Context | None = None
        self.build_args = dict(build_args or {})
        self.require_from = require_from
        self.escape = "\\"
        self.global_scope = require_from  # before FROM: ARGs are only visible to FROM
        self.global_args: dict[str, str | None] = {}
        self.args: dict[str, str | None] = {}  # None: declared without a value
        self.env: dict[str, str] = {}
        self.workdir = "/"
        self.seen_from = False
        self.line = 0
        self.ops: list[Op] = []
        self.handlers: dict[str, Callable[[str, str], None]] = {
            "FROM": self._from,
            "ARG": self._arg,
            "ENV": self._env,
            "RUN": self._run,
            "WORKDIR": self._workdir,
            "COPY": self._copy,
            "ADD": self._copy,
            "ENTRYPOINT": self._process,
            "CMD": self._process,
            "USER": self._user,
        }

    def fail(self, message: str, line: int | None = None) -> DockerfileError:
        where = f" line {line}" if line is not None else ""
        return DockerfileError(f"{self.source}{where}: {message}")

    def parse(self, text: str) -> list[Op]:
        if self.context_dir is not None:
            if not os.path.isdir(self.context_dir):
                raise self.fail(f"context_dir {str(self.context_dir)!r} is not a directory")
            self.context = _Context(str(self.context_dir))
        lines = [line.rstrip("\r") for line in text.removeprefix("\ufeff").split("\n")]
        try:
            self.escape = _escape_directive(lines)
        except _Problem as problem:
            raise self.fail(str(problem), problem.line) from None
        for number, instruction in _logical_lines(lines, self.escape):
            self.line = number
            try:
                self._instruction(instruction)
            except _Problem as problem:
                raise self.fail(str(problem), number) from None
        if self.require_from and not self.seen_from:
            raise self.fail("no FROM instruction; a Dockerfile must start from a base image")
        return self.ops

    def _instruction(self, text: str) -> None:
        word, *rest = text.split(None, 1)
        name, args = word.upper(), rest[0].strip() if rest else ""
        if name not in self.handlers and name not in _IGNORED:
            if name in _UNSUPPORTED:
                raise _Problem(f"{name} is not supported ({_UNSUPPORTED[name]})")
            raise _Problem(f"unknown instruction {word!r}")
        if self.global_scope and name not in ("ARG", "FROM"):
            raise _Problem(f"the first instruction must be FROM (only ARG may come before it), got {name}")
        if name in _KNOWN_FLAGS:
            _reject_flags(name, args)
        if name in _IGNORED:
            if not args:
                raise _Problem(f"{name} needs an argument")
            return
        self.handlers[name](name, args)

    # ----------------------------------------------------------------- helpers

    def _emit(self, kind: str, value: Any) -> None:
        self.ops.append(Op(kind, value, self.line))

    def _variables(self) -> dict[str, str]:
        """What substitution sees now: defined ARGs, overridden by ENV values of the same name."""
        args = self.global_args if self.global_scope else self.args
        defined = {name: value for name, value in args.items() if value is not None}
        return defined if self.global_scope else {**defined, **self.env}

    def _word(self, text: str, variables: Mapping[str, str] | None = None, *, quotes: bool = True) -> str:
        lexer = _Lexer(
            text, self._variables() if variables is None else variables, self.escape, quotes=quotes
        )
        return "".join(lexer.scan(split=False))

    def _words(self, text: str) -> list[str]:
        return _Lexer(text, self._variables(), self.escape).scan(split=True)

    # ----------------------------------------------------------------- handlers

    def _from(self, name: str, args: str) -> None:
        if not self.require_from:
            raise _Problem("dockerfile_commands cannot contain FROM; use Image.from_dockerfile for that")
        if self.seen_from:
            raise _Problem("a second FROM: multi-stage builds are not supported")
        words = _split_raw(args, self.escape)
        if not (len(words) == 1 or (len(words) == 3 and words[1].lower() == "as")):
            raise _Problem("FROM expects 'image' or 'image AS name'")
        image = self._word(words[0])
        if not image:
            raise _Problem(f"FROM image {words[0]!r} is empty after substitution")
        self.seen_from, self.global_scope = True, False
        self._emit("from", image)

    def _arg(self, name: str, args: str) -> None:
        words = _split_raw(args, self.escape)
        if not words:
            raise _Problem("ARG needs a name")
        scope = self.global_args if self.global_scope else self.args
        for word in words:
            arg, has_default, raw_default = word.partition("=")
            if not _IDENTIFIER.fullmatch(arg):
                raise _Problem(f"ARG name {arg!r} is not a valid variable name")
            value: str | None
            if arg in self.build_args:
                value = self.build_args[arg]
            elif has_default:
                value = self._word(raw_default)
            elif not self.global_scope:
                value = self.global_args.get(arg)  # `ARG NAME` in the stage takes the global value
            else:
                value = None
            scope[arg] = value

    def _env(self, name: str, args: str) -> None:
        words = _split_raw(args, self.escape)
        if not words:
            raise _Problem("ENV needs a name and a value")
        variables = self._variables()  # all pairs see the values from before this ENV, as in Docker
        pairs: dict[str, str] = {}
        if "=" not in words[0]:
            parts = re.split(r"\s+", args, maxsplit=1)
            if len(parts) < 2:
                raise _Problem(f"ENV {parts[0]} needs a value: ENV name=value (or ENV name value)")
            pairs[self._word(parts[0], variables)] = self._word(parts[1], variables)
        else:
            for word in words:
                key, has_value, raw = word.partition("=")
                if not has_value:
                    raise _Problem(f"ENV expects name=value pairs, got {word!r}")
                key = self._word(key, variables)
                if not key:
                    raise _Problem("ENV names cannot be blank")
                pairs[key] = self._word(raw, variables)
        self.env.update(pairs)
        self._emit("env", pairs)

    def _run(self, name: str, args: str) -> None:
        if not args:
            raise _Problem("RUN needs a command")
        _reject_heredoc(name, args)
        argv = _exec_form(args, name)
        if argv == []:
            raise _Problem("RUN exec form needs at least an executable")
        command = args if argv is None else shlex.join(argv)
        exports = "".join(
            f"export {arg}={shlex.quote(value)}; "
            for arg, value in self.args.items()
            if value is not None and arg not in self.env
        )
        self._emit("run", exports + command)

    def _workdir(self, name: str, args: str) -> None:
        path = self._word(args)
        if not path:
            raise _Problem("WORKDIR needs a path")
        self.workdir = _absolute(self.workdir, path)
        self._emit("workdir", self.workdir)

    def _copy(self, name: str, args: str) -> None:
        _reject_heredoc(name, args)
        json_args = _exec_form(args, name)
        if json_args is None:
            words = self._words(args)
        else:
            words = [self._word(item, quotes=False) for item in json_args]
        if len(words) < 2:
            raise _Problem(f"{name} needs at least one source and a destination")
        *sources, dest = words
        if name == "ADD":
            for source in sources:
                if _URL.match(source):
                    raise _Problem(
                        f"ADD of a URL is not supported; download it with RUN (curl, wget, git): {source}"
                    )
        if self.context is None:
            raise _Problem(f"{name} needs a build context: pass context_dir=")
        files = self.context.copy(name, sources, dest, self.workdir)
        if files:
            self._emit("copy", files)

    def _process(self, name: str, args: str) -> None:
        if not args:
            raise _Problem(f"{name} needs a command")
        argv = _exec_form(args, name)
        self._emit(name.lower(), ["/bin/sh", "-c", args] if argv is None else argv)

    def _user(self, name: str, args: str) -> None:
        words = self._words(args)
        if len(words) != 1:
            raise _Problem("USER expects one user[:group]" if words else "USER needs a user name")
        self._emit("user", words[0])


def parse(
    text: str,
    *,
    context_dir: str | Path | None,
    build_args: Mapping[str, str] | None = None,
    require_from: bool = True,
    source: str = "Dockerfile",
) -> list[Op]:
    """Parse Dockerfile ``text`` into image operations.

    ``context_dir`` is the directory COPY/ADD sources are relative to (None: COPY/ADD are errors).
    ``build_args`` override ARG defaults. ``require_from``: True for ``Image.from_dockerfile`` (exactly
    one FROM, first), False for ``Image.dockerfile_commands`` (FROM is an error). ``source`` names the
    text in error messages. Raises :class:`DockerfileError`.
    """
    parser = _Parser(context_dir=context_dir, build_args=build_args, require_from=require_from, source=source)
    return parser.parse(text)
