"""The build context of a Dockerfile's COPY and ADD: sources resolved inside ``context_dir`` (globs,
directories expanded to files, symlinks kept inside), ``.dockerignore`` as Docker reads it, and
destinations by Docker's rules. Part of :mod:`vivace._sdk.dockerfile`."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass


class _Problem(Exception):
    """An error in the instruction being parsed; the parser adds the source name and line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _absolute(base: str, path: str) -> str:
    """``path`` resolved against the directory ``base``, normalized."""
    resolved = posixpath.normpath(posixpath.join(base, path))
    return "/" + resolved.lstrip("/")


_GLOB_CHARS = frozenset("*?[")
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://|git@)")


def _has_glob(path: str) -> bool:
    return any(char in _GLOB_CHARS for char in path)


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _char_class(pattern: str, start: int) -> tuple[str, int] | None:
    """The regex for the ``[...]`` starting at ``start`` and the index after it; None if unclosed."""
    index = start + 1
    negate = index < len(pattern) and pattern[index] in "!^"
    if negate:
        index += 1
    end = pattern.find("]", index + 1)  # a ']' right after '[' or '[!' is a member
    if end < 0:
        return None
    members = "".join(char if char == "-" else re.escape(char) for char in pattern[index:end])
    return "[" + ("^" if negate else "") + members + "]", end + 1


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob: ``*`` and ``?`` stop at '/', ``**`` crosses directories, ``[...]`` classes
    (``!`` or ``^`` negates), backslash escapes the next character."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            index += 2
            if pattern.startswith("/", index):
                index += 1
            out.append(".*" if index >= len(pattern) else "(?:.*/)?")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (found := _char_class(pattern, index)) is not None:
            out.append(found[0])
            index = found[1]
            continue
        elif char == "\\" and index + 1 < len(pattern):
            index += 1
            out.append(re.escape(pattern[index]))
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class _IgnoreRule:
    regex: re.Pattern[str]
    exception: bool


class _DockerIgnore:
    """``.dockerignore``: a path is excluded when the last rule matching it or one of its parent
    directories is a plain pattern, not a ``!`` exception."""

    def __init__(self, rules: list[_IgnoreRule]) -> None:
        self.rules = rules
        self.has_exceptions = any(rule.exception for rule in rules)

    @classmethod
    def load(cls, root: str) -> _DockerIgnore:
        path = os.path.join(root, ".dockerignore")
        if not os.path.isfile(path):
            return cls([])
        rules: list[_IgnoreRule] = []
        with open(path, encoding="utf-8") as file:
            for line in file.read().splitlines():
                pattern = line.strip()
                if not pattern or pattern.startswith("#"):
                    continue
                exception = pattern.startswith("!")
                pattern = posixpath.normpath(pattern.removeprefix("!").strip()).lstrip("/")
                if pattern and pattern != ".":
                    rules.append(_IgnoreRule(_glob_regex(pattern), exception))
        return cls(rules)

    def excludes(self, rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: count + 1]) for count in range(len(parts))]
        excluded = False
        for rule in self.rules:
            if any(rule.regex.fullmatch(candidate) for candidate in candidates):
                excluded = not rule.exception
        return excluded

    def prunes(self, rel: str) -> bool:
        """Whether nothing under the directory ``rel`` can be included again."""
        return not self.has_exceptions and self.excludes(rel)


class _Context:
    """The build context: resolves COPY/ADD sources to files. Paths inside are '/'-separated and
    relative to the root ('' is the root itself)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.ignore = _DockerIgnore.load(self.root)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def copy(
        self, instruction: str, sources: list[str], dest: str, workdir: str
    ) -> tuple[tuple[str, str], ...]:
        if not dest:
            raise _Problem(f"{instruction} destination is empty")
        into_dir = dest.endswith("/") or posixpath.basename(dest) in (".", "..")
        target = _absolute(workdir, dest)
        matches = [match for source in sources for match in self._match(instruction, source)]
        if len(matches) > 1 and not into_dir:
            raise _Problem(
                f"{instruction} with more than one source file needs a destination directory "
                f"ending in '/' (got {dest!r})"
            )
        single_file = len(matches) == 1 and not into_dir  # then dest names the file itself
        files: dict[str, str] = {}  # path in the image -> local path; a later source wins
        for rel, is_dir in matches:
            if is_dir:
                for file in self._walk(rel):
                    files[posixpath.join(target, file[len(rel) + 1 :] if rel else file)] = self.path(file)
                continue
            if instruction == "ADD" and rel.lower().endswith(_ARCHIVE_SUFFIXES):
                raise _Problem(f"ADD of an archive is not supported; extract it first or use RUN ({rel})")
            image_path = target if single_file else posixpath.join(target, posixpath.basename(rel))
            files[image_path] = self.path(rel)
        return tuple((local, image_path) for image_path, local in files.items())

    def _match(self, instruction: str, source: str) -> list[tuple[str, bool]]:
        """The context paths a source names, each with whether it is a directory."""
        if not source:
            raise _Problem(f"{instruction} source is empty")
        rel = posixpath.normpath(source.lstrip("/") or ".")
        if rel == ".." or rel.startswith("../"):
            raise _Problem(f"{instruction} source {source!r} is outside the build context")
        rel = "" if rel == "." else rel
        candidates = self._glob(rel) if _has_glob(rel) else self._existing(rel)
        found: list[tuple[str, bool]] = []
        for candidate in candidates:
            is_dir = os.path.isdir(self.path(candidate))
            if not is_dir and self.ignore.excludes(candidate):
                continue
            real = self._inside(candidate)
            if not is_dir and not os.path.isfile(real):
                raise _Problem(f"{instruction} source {candidate!r} is not a regular file or directory")
            found.append((candidate, is_dir))
        if not found:
            raise _Problem(
                f"{instruction} source {source!r} matches nothing in the build context {self.root}"
                + (" (after .dockerignore)" if self.ignore.rules else "")
            )
        return found

    def _existing(self, rel: str) -> list[str]:
        return [rel] if os.path.lexists(self.path(rel)) else []

    def _glob(self, rel: str) -> list[str]:
        found = [""]
        for segment in rel.split("/"):
            regex = _glob_regex(segment) if _has_glob(segment) else None
            matched: list[str] = []
            for base in found:
                if regex is None:
                    if os.path.lexists(self.path(_join(base, segment))):
                        matched.append(_join(base, segment))
                elif os.path.isdir(self.path(base)):
                    names = sorted(os.listdir(self.path(base)))
                    matched.extend(_join(base, name) for name in names if regex.fullmatch(name))
            found = matched
        return found

    def _inside(self, rel: str) -> str:
        """The real path of ``rel``; an error if it is outside the context or a broken link."""
        real = os.path.realpath(self.path(rel))
        if os.path.commonpath([real, self.root]) != self.root:
            raise _Problem(f"{rel!r} is a symlink to {real}, outside the build context")
        if not os.path.exists(real):
            raise _Problem(f"{rel!r} is a broken symlink")
        return real

    def _walk(self, rel: str) -> list[str]:
        """The regular files under the directory ``rel``, recursively, sorted, minus .dockerignore."""
        files: list[str] = []
        with os.scandir(self.path(rel)) as iterator:
            entries = sorted(iterator, key=lambda entry: entry.name)
        for entry in entries:
            child = _join(rel, entry.name)
            if entry.is_symlink():
                if self.ignore.excludes(child):
                    continue
                real = self._inside(child)
                if os.path.isdir(real):
                    raise _Problem(
                        f"{child!r} is a symlink to a directory, which is not supported; "
                        "copy the directory it points to, or exclude the link in .dockerignore"
                    )
                if os.path.isfile(real):
                    files.append(child)
            elif entry.is_dir(follow_symlinks=False):
                if not self.ignore.prunes(child):
                    files.extend(self._walk(child))
            elif entry.is_file(follow_symlinks=False) and not self.ignore.excludes(child):
                files.append(child)
        return files


# --------------------------------------------------------------------------- instructions
