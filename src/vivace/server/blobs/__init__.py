"""Content-addressed blob storage (large payloads, uploaded source)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class BlobError(ValueError):
    """A blob's content does not match its address, or the address is malformed."""


def _check(sha: str) -> None:
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BlobError(f"blob id must be a hex sha256, got {sha[:80]!r}")


class LocalBlobStore:
    """Blobs as files ``<root>/<aa>/<sha256>``, written atomically (temp file + rename)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha: str) -> Path:
        _check(sha)
        return self.root / sha[:2] / sha

    def put(self, data: bytes, sha: str | None = None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if sha is not None and sha != digest:
            raise BlobError(f"content hashes to {digest}, not {sha}")
        path = self._path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, sha: str) -> bytes | None:
        try:
            return self._path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, sha: str) -> bool:
        return self._path(sha).exists()
