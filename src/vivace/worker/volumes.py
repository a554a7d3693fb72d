"""A container's volume mounts on its worker: assembled from the blob store, committed back.

Each mount is a directory of its own under the container's directory, filled from the volume's latest
version before the container starts and bind-mounted at the function's path. The container writes there
like any directory; ``commit()`` (from the container, through its socket, and always when it exits) scans
the directory, uploads what changed as blobs and commits the differences as one new version, so commits
from containers that changed different files merge. ``reload()`` commits local changes, then brings the
directory to the latest version.

File content is cached per worker by digest (``<worker>/volume-cache``): a read-only mount hard-links the
cached files (the bind mount is read-only, so nothing can change them); a writable one gets copies.
Cached files no mount links are pruned when the cache grows past its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vivace.client import ApiClient
from vivace.exception import NotFoundError
from vivace.protocol.volumes import DIRECTORY, MAX_OPS

log = logging.getLogger("vivace.worker")
CACHE_LIMIT = 8 << 30  # bytes of cached content no mount uses, kept for the next container


def cache_limit() -> int:
    raw = os.environ.get("VIVACE_VOLUME_CACHE_MIB")
    try:
        return int(raw) << 20 if raw else CACHE_LIMIT
    except ValueError:
        return CACHE_LIMIT


@dataclass
class _Seen:
    """A path as the mount last synced it: its type, content digest and what stat said then."""

    kind: str
    digest: str | None
    size: int
    mtime_ns: int
    mode: int


class VolumeMount:
    def __init__(
        self,
        api: ApiClient,
        volume_id: str,
        root: Path,
        *,
        read_only: bool,
        cache: Path,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.api = api
        self.volume_id = volume_id
        self.root = root
        self.read_only = read_only
        self.cache = cache
        self.owner = owner
        self.version = 0
        self.seen: dict[str, _Seen] = {}
        self.lock = asyncio.Lock()

    # -- assemble ------------------------------------------------------------------------------------
    async def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._own(self.root)
        await self._sync_to_latest()

    async def _manifest(self) -> tuple[int, list[dict[str, Any]]]:
        out = await self.api.get_json(
            f"/v1/volumes/{self.volume_id}/entries", params={"path": "", "recursive": "1"}, retry_for=30
        )
        return int(out["version"]), list(out["entries"])

    async def _sync_to_latest(self) -> None:
        version, entries = await self._manifest()
        remote = {e["path"]: e for e in entries}
        # gone from the volume: files first, then directories deepest first
        for path in sorted((p for p in self.seen if p not in remote), key=lambda p: -p.count("/")):
            target = self.root / path
            with contextlib.suppress(FileNotFoundError, OSError):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            self.seen.pop(path, None)
        for path, e in sorted(remote.items()):
            old = self.seen.get(path)
            if e["type"] == DIRECTORY:
                target = self.root / path
                if target.exists() and not target.is_dir():
                    target.unlink()
                target.mkdir(mode=e["mode"] or 0o755, exist_ok=True)
                self._own(target)
                self.seen[path] = self._stat(path, DIRECTORY, None)
            elif old is None or old.digest != e["digest"] or old.mode != e["mode"]:
                await self._place(path, e)
        self.version = version

    async def _place(self, path: str, e: dict[str, Any]) -> None:
        cached = await self._cached(e["digest"])
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        if self.read_only:
            tmp = target.with_name(f".vivace-{os.getpid()}-{target.name}")
            tmp.unlink(missing_ok=True)
            os.link(cached, tmp)
        else:
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=".vivace-")
            os.close(fd)
            tmp = Path(name)
            await asyncio.to_thread(shutil.copyfile, cached, tmp)
            os.chmod(tmp, e["mode"] & 0o7777)
            os.utime(tmp, (e["mtime"], e["mtime"]))
            self._own(tmp)
        os.replace(tmp, target)
        self.seen[path] = self._stat(path, "file", e["digest"])

    async def _cached(self, digest: str) -> Path:
        path = self.cache / digest[:2] / digest
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        os.close(fd)
        tmp = Path(name)
        try:
            await self.api.download(f"/v1/blobs/{digest}", tmp)
            got = await asyncio.to_thread(_sha256, tmp)
            if got != digest:
                raise OSError(f"volume {self.volume_id}: blob {digest} arrived with the wrong content")
            os.chmod(tmp, 0o444)  # shared by read-only mounts: nobody writes it
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return path

    # -- commit --------------------------------------------------------------------------------------
    async def commit(self) -> int:
        """Send what changed since the last sync as one new version; return the volume's version."""
        if self.read_only:
            return self.version
        async with self.lock:
            current = await asyncio.to_thread(self._scan)
            ops: list[dict[str, Any]] = []
            removed = sorted(p for p in self.seen if p not in current)
            for path in removed:  # a removed directory takes its children with it
                if not any(path.startswith(r + "/") for r in removed if r != path):
                    ops.append({"op": "rm", "path": path, "recursive": True})
            changed: dict[str, _Seen] = {}
            for path, now in sorted(current.items()):
                old = self.seen.get(path)
                if now.kind == DIRECTORY:
                    if old is None or old.kind != DIRECTORY:
                        ops.append({"op": "mkdir", "path": path, "mode": now.mode})
                    changed[path] = now
                    continue
                if (
                    old is not None
                    and old.kind == "file"
                    and (old.size, old.mtime_ns, old.mode)
                    == (
                        now.size,
                        now.mtime_ns,
                        now.mode,
                    )
                ):
                    now.digest = old.digest
                    changed[path] = now
                    continue
                if old is not None and old.kind == DIRECTORY:
                    ops.append({"op": "rm", "path": path, "recursive": True})
                now.digest = await self._upload(self.root / path)
                changed[path] = now
                ops.append(
                    {
                        "op": "put",
                        "path": path,
                        "digest": now.digest,
                        "size": now.size,
                        "mode": now.mode,
                        "mtime": now.mtime_ns / 1e9,
                    }
                )
            for start in range(0, len(ops), MAX_OPS):
                out = await self.api.post_json(
                    f"/v1/volumes/{self.volume_id}/commit",
                    {"ops": ops[start : start + MAX_OPS]},
                    retry_for=60,
                )
                self.version = int(out["version"])
            self.seen = changed
            return self.version

    async def _upload(self, path: Path) -> str:
        digest = await asyncio.to_thread(_sha256, path)
        try:
            await self.api.request("HEAD", f"/v1/blobs/{digest}", retry_for=30)
        except NotFoundError:
            await self.api.put_file(f"/v1/blobs/{digest}", path)
        return digest

    def _scan(self) -> dict[str, _Seen]:
        """Every directory and regular file under the mount (symbolic links and others are skipped)."""
        found: dict[str, _Seen] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in [*dirnames, *filenames]:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if name.startswith(".vivace-"):
                    continue
                st = os.lstat(self.root / rel)
                if stat.S_ISDIR(st.st_mode):
                    found[rel] = _Seen(DIRECTORY, None, 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    found[rel] = _Seen("file", None, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        return found

    async def reload(self) -> int:
        """Commit local changes, then bring the mount to the volume's latest version."""
        await self.commit()
        async with self.lock:
            await self._sync_to_latest()
        return self.version

    async def close(self) -> None:
        """On the container's exit: commit what it wrote (a writable mount), then forget the directory."""
        try:
            if not self.read_only:
                await self.commit()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            await asyncio.to_thread(prune_cache, self.cache, cache_limit())

    # -- helpers -------------------------------------------------------------------------------------
    def _stat(self, path: str, kind: str, digest: str | None) -> _Seen:
        st = os.lstat(self.root / path)
        return _Seen(
            kind, digest, st.st_size if kind != DIRECTORY else 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode)
        )

    def _own(self, path: Path) -> None:
        if self.owner is not None:
            os.lchown(path, *self.owner)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def prune_cache(cache: Path, limit: int) -> int:
    """Delete cached content no mount links (least recently used first) past ``limit`` bytes; return
    how many bytes were freed."""
    if not cache.is_dir():
        return 0
    unused: list[tuple[float, int, Path]] = []
    for sub in cache.iterdir():
        if not sub.is_dir():
            continue
        for f in sub.iterdir():
            with contextlib.suppress(FileNotFoundError):
                st = f.stat()
                if f.name.startswith(".part-"):
                    continue
                if st.st_nlink == 1:
                    unused.append((st.st_atime, st.st_size, f))
    total = sum(size for _, size, _ in unused)
    freed = 0
    for _, size, f in sorted(unused, key=lambda t: t[0]):
        if total - freed <= limit:
            break
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            freed += size
    return freed
