"""Layer tars built in Python, and the view a container gets of unpacked layers (a real overlay
mount in a private mount namespace)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .pusher import Layer
from .tools import require_root, require_tool

Entry = tuple[tarfile.TarInfo, bytes | None]


def file(name: str, data: bytes = b"", mode: int = 0o644) -> Entry:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
    return info, data


def directory(name: str, mode: int = 0o755) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 1_600_000_000
    return info, None


def symlink(name: str, target: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1_600_000_000
    return info, None


def layer(entries: list[Entry], compression: str = "gzip") -> Layer:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    plain = raw.getvalue()
    if compression == "gzip":
        blob = gzip.compress(plain, mtime=0)
    elif compression == "zstd":
        zstd = require_tool("zstd", "zstd")
        blob = subprocess.run([zstd, "-q", "-c"], input=plain, capture_output=True, check=True).stdout
    else:
        blob = plain
    return Layer(blob, "sha256:" + hashlib.sha256(plain).hexdigest(), compression)


_WALK = r"""
import json, os, sys
root, seen = sys.argv[1], {}
for d, dirs, files in os.walk(root):
    for name in dirs + files:
        p = os.path.join(d, name)
        rel = os.path.relpath(p, root)
        if os.path.islink(p):
            seen[rel] = "-> " + os.readlink(p)
        elif os.path.isdir(p):
            seen[rel + "/"] = ""
        else:
            seen[rel] = open(p).read()
print(json.dumps(seen))
"""


def merged_view(layer_dirs: list[Path]) -> dict[str, str]:
    """What a container sees of these layers (base first): every path, with file contents, read
    through a real read-only overlay mount that only exists inside ``unshare -m``."""
    require_root("mounting overlayfs")
    unshare = require_tool("unshare", "util-linux")
    with tempfile.TemporaryDirectory(prefix="vivace-merged-") as tmp:
        empty, merged = Path(tmp, "empty"), Path(tmp, "merged")
        empty.mkdir()
        merged.mkdir()
        lowers = ":".join(str(p) for p in [*reversed(layer_dirs), empty])  # topmost first
        script = 'mount -t overlay overlay -o "lowerdir=$LOWERS" "$MERGED" && exec "$PY" -c "$WALK" "$MERGED"'
        env = {**os.environ, "LOWERS": lowers, "MERGED": str(merged), "PY": "python3", "WALK": _WALK}
        proc = subprocess.run(
            [unshare, "-m", "--propagation", "private", "sh", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert os.listdir(merged) == [], "the overlay mount leaked out of its namespace"
    return dict(json.loads(proc.stdout))
