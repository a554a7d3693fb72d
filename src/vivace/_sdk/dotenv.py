"""Read ``.env`` files: ``KEY=VALUE`` lines, as ``Secret.from_dotenv`` and ``vivace secret create
--from-dotenv`` take them.

The format is the common one (python-dotenv, docker compose): blank lines and ``#`` comments are
skipped; ``export KEY=VALUE`` is allowed; an unquoted value is trimmed and ends at `` #``; a
single-quoted value is taken literally; a double-quoted value understands ``\\n``, ``\\t``, ``\\"`` and
``\\\\``; quoted values may span lines. ``${VAR}`` is not expanded. Errors give the line number, never
a value.
"""

from __future__ import annotations

import re
from pathlib import Path

from vivace.exception import InvalidError

_KEY = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def parse(text: str, source: str = ".env") -> dict[str, str]:
    """The variables ``text`` sets, in order (a later line wins)."""
    out: dict[str, str] = {}
    pos, line_no = 0, 1
    if text.startswith("\ufeff"):
        pos = 1
    while pos < len(text):
        end = text.find("\n", pos)
        line_end = len(text) if end < 0 else end
        line = text[pos:line_end]
        if not line.strip() or line.lstrip().startswith("#"):
            pos, line_no = line_end + 1, line_no + 1
            continue
        m = _KEY.match(line)
        if m is None:
            raise InvalidError(f"{source}, line {line_no}: expected KEY=VALUE")
        key = m.group(1)
        start = pos + m.end()
        quote = text[start : start + 1]
        if quote in ("'", '"'):
            value, after = _quoted(text, start, quote, source, line_no)
            rest_end = text.find("\n", after)
            rest_end = len(text) if rest_end < 0 else rest_end
            rest = text[after:rest_end].strip()
            if rest and not rest.startswith("#"):
                raise InvalidError(f"{source}, line {line_no}: unexpected text after the closing quote")
            line_no += text.count("\n", pos, rest_end) + 1
            pos = rest_end + 1
        else:
            raw = text[start:line_end]
            value = re.split(r"\s+#", raw, maxsplit=1)[0].strip()
            pos, line_no = line_end + 1, line_no + 1
        out[key] = value
    return out


def _quoted(text: str, start: int, quote: str, source: str, line_no: int) -> tuple[str, int]:
    """The value of the quoted string at ``start`` and the position after its closing quote."""
    i, chars = start + 1, list[str]()
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(chars), i + 1
        if c == "\\" and quote == '"' and i + 1 < len(text):
            nxt = text[i + 1]
            chars.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        chars.append(c)
        i += 1
    raise InvalidError(f"{source}, line {line_no}: the quoted value is never closed")


def find(path: str | Path | None, filename: str = ".env") -> Path:
    """The dotenv file ``path`` names: the file itself, or ``filename`` in the directory it names (a
    ``.py`` file: its directory) or the nearest parent that has one; by default from the working
    directory."""
    start = Path.cwd() if path is None else Path(path).expanduser()
    if start.is_file() and start.suffix != ".py":
        return start
    if start.is_file():
        start = start.parent
    if not start.is_dir():
        raise InvalidError(f"no such file or directory: {start}")
    for directory in (start.resolve(), *start.resolve().parents):
        candidate = directory / filename
        if candidate.is_file():
            return candidate
    raise InvalidError(f"no {filename} file in {start.resolve()} or any directory above it")


def load(path: str | Path | None, filename: str = ".env") -> dict[str, str]:
    found = find(path, filename)
    try:
        text = found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidError(f"cannot read {found}: {err}") from None
    return parse(text, str(found))
