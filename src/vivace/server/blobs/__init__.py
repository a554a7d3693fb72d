"""Content-addressed blob storage (large payloads, uploaded source)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path


class BlobError(ValueError):
    """A blob's content does not match its address, or the address is malformed."""


class BlobTooLarge(BlobError):
    """A blob exceeds the size the store accepts."""


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

    async def put_stream(self, chunks: AsyncIterator[bytes], sha: str, max_size: int) -> int:
        """Store a body that arrives in ``chunks`` (never whole in memory) under ``sha``, checking it
        hashes to ``sha`` and stays within ``max_size`` bytes; nothing is left behind on failure.
        Returns its size."""
        path = self._path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_size:
                        raise BlobTooLarge(f"a blob may have at most {max_size} bytes")
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
            if digest.hexdigest() != sha:
                raise BlobError(f"content hashes to {digest.hexdigest()}, not {sha}")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return size

    def size(self, sha: str) -> int:
        return self._path(sha).stat().st_size

    def path(self, sha: str) -> Path | None:
        """The file holding blob ``sha`` (for streaming it out), or None."""
        path = self._path(sha)
        return path if path.is_file() else None

    def get(self, sha: str) -> bytes | None:
        try:
            return self._path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, sha: str, unless_used_since: float | None = None) -> bool:
        """Delete blob ``sha``; with ``unless_used_since``, only if nobody uploaded it again (which
        :meth:`touch` records) since that time. Returns whether it was deleted."""
        path = self._path(sha)
        try:
            if unless_used_since is not None and path.stat().st_mtime >= unless_used_since:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def touch(self, sha: str) -> None:
        """Mark the blob just used (an upload of content that was already here)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._path(sha))

    def exists(self, sha: str) -> bool:
        return self._path(sha).exists()
