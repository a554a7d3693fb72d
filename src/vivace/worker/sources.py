"""The user's uploaded source, fetched by content hash and unpacked once per worker."""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

from vivace.client import ApiClient


class SourceCache:
    def __init__(self, root: Path, api: ApiClient) -> None:
        self.root = root
        self.api = api
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, sha: str) -> Path:
        dest = self.root / sha
        if dest.exists():
            return dest
        lock = self._locks.setdefault(sha, asyncio.Lock())
        async with lock:
            if dest.exists():
                return dest
            data = (await self.api.request("GET", f"/v1/blobs/{sha}")).content
            if hashlib.sha256(data).hexdigest() != sha:
                raise RuntimeError(f"source blob {sha} is corrupt")
            await asyncio.to_thread(_unpack, data, dest)
        return dest


def _unpack(data: bytes, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+, 3.12+
            tar.extractall(tmp, filter="data")
        else:  # older interpreters (Debian 12's 3.11.2): the same rules, by hand
            tar.extractall(tmp, members=_safe_members(tar))
    for p in tmp.rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)  # read-only to the container
    tmp.chmod(0o555)
    tmp.rename(dest)


def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Regular files and directories with relative paths that stay inside the target, as the "data"
    filter allows; anything else (links, devices, absolute or escaping paths) is refused."""
    members = []
    for m in tar.getmembers():
        parts = Path(m.name).parts
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise ValueError(f"refusing source archive member {m.name!r}")
        m.mode &= 0o755
        members.append(m)
    return members
