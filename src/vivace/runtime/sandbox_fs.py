"""A sandbox's file operations, run inside the sandbox as its user by the worker (``Sandbox.filesystem``).

Run as a script (``python -I -S sandbox_fs.py OP PATH ARGS_JSON``), never imported by the vivace
package: it needs only the standard library and starts in milliseconds. Input data arrives on stdin. The
answer is one JSON line on stdout (``{"ok": true, ...}`` or ``{"ok": false, "errno", "error"}``),
followed, for ``read``, by the bytes read. Code here stays Python 3.8-compatible (images' Pythons vary).
"""

import json
import os
import shutil
import stat
import sys
from typing import Any, BinaryIO, Dict, Optional

CHUNK = 1 << 20


def _entry(path: str, name: Optional[str] = None) -> Dict[str, Any]:
    st = os.lstat(path)
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else (
        "file" if stat.S_ISREG(st.st_mode) else "other")  # fmt: skip
    return {
        "name": name if name is not None else os.path.basename(path.rstrip("/")) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


def _read(path: str, args: Dict[str, Any], out: BinaryIO) -> None:
    offset, length = int(args.get("offset", 0)), int(args.get("length", 1 << 62))
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if stat.S_ISDIR(os.fstat(f.fileno()).st_mode):
            raise IsADirectoryError(21, "is a directory", path)
        f.seek(offset)
        data = f.read(length)
    out.write(json.dumps({"ok": True, "size": size, "length": len(data)}).encode() + b"\n")
    out.write(data)


def _write(path: str, args: Dict[str, Any], out: BinaryIO) -> None:
    if args.get("parents", True):
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
    offset = int(args.get("offset", 0))
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.get("truncate", offset == 0) else 0)
    fd = os.open(path, flags, 0o644)
    written = 0
    with os.fdopen(fd, "wb") as f:
        f.seek(offset)
        while True:
            chunk = sys.stdin.buffer.read(CHUNK)
            if not chunk:
                break
            f.write(chunk)
            written += len(chunk)
    out.write(json.dumps({"ok": True, "written": written}).encode() + b"\n")


def _list(path: str, args: Dict[str, Any], out: BinaryIO) -> None:
    names = sorted(os.listdir(path))
    entries = []
    for name in names:
        try:
            entries.append(_entry(os.path.join(path, name), name))
        except OSError:
            continue  # removed meanwhile
    out.write(json.dumps({"ok": True, "entries": entries}).encode() + b"\n")


def _stat(path: str, args: Dict[str, Any], out: BinaryIO) -> None:
    out.write(json.dumps({"ok": True, "entry": _entry(path)}).encode() + b"\n")


def _mkdir(path: str, args: Dict[str, Any], out: BinaryIO) -> None:
    if args.get("parents", True):
        os.makedirs(path, exist_ok=True)
    else:
        os.mkdir(path)
    out.write(b'{"ok": true}\n')


def _remove(path: str, args: Dict[str, Any], out: BinaryIO) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        if args.get("recursive"):
            shutil.rmtree(path)
        else:
            os.rmdir(path)
    else:
        os.unlink(path)
    out.write(b'{"ok": true}\n')


OPS = {"read": _read, "write": _write, "list": _list, "stat": _stat, "mkdir": _mkdir, "remove": _remove}


def main() -> None:
    out = sys.stdout.buffer
    try:
        op, path, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        OPS[op](path, args, out)
    except OSError as err:
        out.write(json.dumps({"ok": False, "errno": err.errno or 0, "error": str(err)}).encode() + b"\n")
    except Exception as err:  # a bad request from the worker
        out.write(json.dumps({"ok": False, "errno": 0, "error": repr(err)}).encode() + b"\n")
    out.flush()


if __name__ == "__main__":
    main()
