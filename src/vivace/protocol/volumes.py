"""Volume paths and commit operations as the SDK, the control plane and workers all see them.

A path inside a volume is relative and normalised: ``"a/b.txt"`` (the root is ``""``). Clients may write
``"/a/b.txt"`` or ``"a//b.txt/"``; ``norm_path`` turns those into the stored form and refuses what could
escape the volume (``..``) or cannot be a file name.
"""

from __future__ import annotations

from typing import Any

MAX_PATH = 4096
MAX_NAME = 255
MAX_OPS = 10_000
"""Operations one commit applies, at most (a batch upload of more files commits in several)."""
FILE = "file"
DIRECTORY = "directory"


class PathError(ValueError):
    """A path that cannot name a file or directory in a volume."""


def norm_path(path: Any, *, root_ok: bool = True) -> str:
    """The stored form of ``path``: no leading or trailing slash, no empty, ``.`` or ``..`` parts."""
    if not isinstance(path, str):
        raise PathError(f"a volume path must be a string, got {type(path).__name__}")
    if "\0" in path or len(path.encode()) > MAX_PATH:
        raise PathError(f"invalid volume path {path[:100]!r}: no NUL bytes, at most {MAX_PATH} bytes")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathError(f"invalid volume path {path!r}: '..' is not allowed")
    if any(len(p.encode()) > MAX_NAME for p in parts):
        raise PathError(f"invalid volume path {path[:100]!r}: a name has at most {MAX_NAME} bytes")
    if not parts and not root_ok:
        raise PathError("this needs a path inside the volume, not its root")
    return "/".join(parts)


def parent_dirs(path: str) -> list[str]:
    """Every directory above ``path`` (root excluded), outermost first: ``a/b/c`` -> ``[a, a/b]``."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def check_ops(ops: Any) -> list[dict[str, Any]]:
    """Validate a commit's operations; raise ``PathError``/``ValueError`` naming the first bad one.

    - ``{"op": "put", "path", "digest", "size", "mode", "mtime", "exclusive"?}``: a file's content;
    - ``{"op": "mkdir", "path", "mode"?, "mtime"?}``: a directory (and its parents);
    - ``{"op": "rm", "path", "recursive"?}``: a file, or a directory (``recursive`` when not empty);
    - ``{"op": "cp", "src", "dst"}``: copy a file or directory tree (content is shared by digest).
    """
    if not isinstance(ops, list) or not ops or len(ops) > MAX_OPS:
        raise ValueError(f"ops must be a list of 1 to {MAX_OPS} operations")
    out: list[dict[str, Any]] = []
    for n, raw in enumerate(ops):
        if not isinstance(raw, dict):
            raise ValueError(f"ops[{n}] must be an object")
        op = raw.get("op")
        if op == "put":
            digest, size, mode = raw.get("digest"), raw.get("size"), raw.get("mode", 0o644)
            if not (
                isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
            ):
                raise ValueError(f"ops[{n}]: digest must be a hex sha256")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"ops[{n}]: size must be a non-negative integer")
            out.append(
                {
                    "op": op,
                    "path": norm_path(raw.get("path"), root_ok=False),
                    "digest": digest,
                    "size": size,
                    "mode": _mode(mode, n),
                    "mtime": _mtime(raw.get("mtime"), n),
                    "exclusive": bool(raw.get("exclusive", False)),
                }
            )
        elif op == "mkdir":
            out.append(
                {
                    "op": op,
                    "path": norm_path(raw.get("path"), root_ok=False),
                    "mode": _mode(raw.get("mode", 0o755), n),
                    "mtime": _mtime(raw.get("mtime"), n),
                }
            )
        elif op == "rm":
            out.append(
                {
                    "op": op,
                    "path": norm_path(raw.get("path"), root_ok=False),
                    "recursive": bool(raw.get("recursive")),
                }
            )
        elif op == "cp":
            out.append(
                {"op": op, "src": norm_path(raw.get("src"), root_ok=False), "dst": norm_path(raw.get("dst"))}
            )
        else:
            raise ValueError(f"ops[{n}]: op must be put, mkdir, rm or cp, got {op!r}")
    return out


def _mode(value: Any, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise ValueError(f"ops[{n}]: mode must be permission bits (0 to 0o7777)")
    return value


def _mtime(value: Any, n: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e11:
        raise ValueError(f"ops[{n}]: mtime must be seconds since the epoch")
    return float(value)
