"""Packaging the user's source: the module's file, or its top-level package, as a deterministic
tar.gz addressed by its SHA-256 (unchanged source is never uploaded twice)."""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from vivace.exception import InvalidError

SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules", ".mypy_cache", ".pytest_cache"}
MAX_SOURCE = 64 * 1024 * 1024


@dataclass(frozen=True)
class SourcePackage:
    module: str  # the importable name of the function's module inside the container
    data: bytes
    sha256: str


def module_name_and_root(module: str, file: str) -> tuple[str, Path, list[Path]]:
    """Return (import name, root dir to put on sys.path, files to ship)."""
    path = Path(file).resolve()
    if module == "__main__":
        module = path.stem
    parts = module.split(".")
    if len(parts) == 1 or not (path.parent / "__init__.py").exists():
        return (
            path.stem,
            path.parent,
            [path],
        )  # a plain file (or in a namespace package): import it by its stem
    pkg_dir = path.parent
    for _ in parts[1:-1]:
        pkg_dir = pkg_dir.parent
    root = pkg_dir.parent
    files = [
        p
        for p in pkg_dir.rglob("*")
        if p.is_file() and not (set(p.relative_to(root).parts) & SKIP_DIRS) and not p.name.endswith(".pyc")
    ]
    return module, root, files


def package(module: str, file: str | None) -> SourcePackage:
    if file is None:
        raise InvalidError(f"cannot find the source file of module {module!r}; use serialized=True")
    name, root, files = module_name_and_root(module, file)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for p in sorted(files):
            info = tarfile.TarInfo(str(p.relative_to(root)))
            data = p.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            tar.addfile(info, io.BytesIO(data))
    blob = gzip.compress(raw.getvalue(), mtime=0)
    if len(blob) > MAX_SOURCE:
        raise InvalidError(
            f"the source of {name!r} is {len(blob)} bytes compressed; the limit is {MAX_SOURCE}"
        )
    return SourcePackage(name, blob, hashlib.sha256(blob).hexdigest())


def main_file() -> str | None:
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None)
