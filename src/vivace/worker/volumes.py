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

The worker runs as root and a running container can change its mount at any moment, so every access to
a mount's files goes through directory file descriptors, one component at a time, never following a
symbolic link (``O_NOFOLLOW``, ``os.fwalk``, ``dir_fd=``): a link or a directory swapped for one can
neither make the worker write outside the mount nor make it upload a host file into the volume.
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
import time
import uuid
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
        self.downloaded = 0  # bytes fetched into the cache, and the seconds that took (for the log)
        self.download_s = 0.0

    # -- assemble ------------------------------------------------------------------------------------
    async def prepare(self) -> str:
        """Fill the mount with the latest version; return a line saying what that took (for the logs)."""
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        if self.owner is not None:
            os.chown(self.root, *self.owner)
        await self._sync_to_latest()
        files = [s for s in self.seen.values() if s.kind != DIRECTORY]
        line = (
            f"volume {self.volume_id} (version {self.version}) mounted{' read-only' if self.read_only else ''}: "
            f"{len(files)} file(s), {sum(f.size for f in files) / 2**20:.1f} MiB in {time.monotonic() - started:.2f} s"
        )
        if self.downloaded:
            line += f" ({self.downloaded / 2**20:.1f} MiB fetched into the worker's cache in {self.download_s:.2f} s)"
        return line

    async def _manifest(self) -> tuple[int, list[dict[str, Any]]]:
        out = await self.api.get_json(
            f"/v1/volumes/{self.volume_id}/entries", params={"path": "", "recursive": "1"}, retry_for=30
        )
        return int(out["version"]), list(out["entries"])

    async def _sync_to_latest(self) -> None:
        version, entries = await self._manifest()
        remote = {e["path"]: e for e in entries}
        # gone from the volume: deepest first (a directory's files before it)
        for path in sorted((p for p in self.seen if p not in remote), key=lambda p: -p.count("/")):
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._remove, path)
            self.seen.pop(path, None)
        for path, e in sorted(remote.items()):  # a directory sorts before what is in it
            old = self.seen.get(path)
            if e["type"] == DIRECTORY:
                if old is None or old.kind != DIRECTORY:
                    await asyncio.to_thread(self._make_dir, path, e["mode"] or 0o755)
                    self.seen[path] = _Seen(DIRECTORY, None, 0, 0, e["mode"] or 0o755)
            elif old is None or old.digest != e["digest"] or old.mode != e["mode"]:
                cached = await self._cached(e["digest"])
                self.seen[path] = await asyncio.to_thread(self._place, path, e, cached)
        self.version = version

    # -- the mount's files, through directory descriptors ------------------------------------------
    def _parent(self, path: str, create: bool = False) -> tuple[int, str]:
        """An open descriptor of ``path``'s directory (walked without following links) and its name."""
        *dirs, name = path.split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for part in dirs:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    if self.owner is not None:
                        os.fchown(nxt, *self.owner)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def _remove(self, path: str) -> None:
        pfd, name = self._parent(path)
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=pfd)
            else:
                os.unlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def _make_dir(self, path: str, mode: int) -> None:
        pfd, name = self._parent(path, create=True)
        try:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=pfd)  # a file (or link) where the volume has a directory
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=pfd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
            try:
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
            finally:
                os.close(fd)
        finally:
            os.close(pfd)

    def _place(self, path: str, e: dict[str, Any], cached: Path) -> _Seen:
        """Put the cached content at ``path`` (atomically: a temporary name, then a rename)."""
        pfd, name = self._parent(path, create=True)
        tmp = f".vivace-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                    shutil.rmtree(name, dir_fd=pfd)
            if self.read_only:  # nobody can write through a read-only mount: share the cached file
                os.link(cached, tmp, dst_dir_fd=pfd)
            else:
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=pfd)
                try:
                    with cached.open("rb") as src:
                        _copy(src.fileno(), out)
                    os.fchmod(out, e["mode"] & 0o7777)
                    os.utime(out, (e["mtime"], e["mtime"]))
                    if self.owner is not None:
                        os.fchown(out, *self.owner)
                finally:
                    os.close(out)
            os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=pfd)
            raise
        finally:
            os.close(pfd)
        return _Seen("file", e["digest"], st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))

    async def _cached(self, digest: str) -> Path:
        path = self.cache / digest[:2] / digest
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        os.close(fd)
        tmp = Path(name)
        try:
            started = time.monotonic()
            await self.api.download(f"/v1/blobs/{digest}", tmp, sha256=digest)  # verified as it arrives
            self.downloaded += os.stat(tmp).st_size
            self.download_s += time.monotonic() - started
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
                try:
                    now.digest, now.size = await self._upload(path)
                except (FileNotFoundError, NotADirectoryError, _NotRegular):
                    continue  # removed or replaced while we looked: the next commit sees what is there
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

    async def _upload(self, path: str) -> tuple[str, int]:
        """Hash and upload the file at ``path`` through one descriptor (opened without following links,
        so what is hashed is what is sent); its digest and size."""
        f = await asyncio.to_thread(self._open_file, path)
        try:
            digest = await asyncio.to_thread(_sha256_of, f)
            size = os.fstat(f.fileno()).st_size
            try:
                await self.api.request("HEAD", f"/v1/blobs/{digest}", retry_for=30)
            except NotFoundError:
                await self.api.put_file(f"/v1/blobs/{digest}", f)
        finally:
            f.close()
        return digest, size

    def _open_file(self, path: str) -> Any:
        pfd, name = self._parent(path)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=pfd)
        finally:
            os.close(pfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a fifo or device made meanwhile: never read it
            os.close(fd)
            raise _NotRegular(path)
        return os.fdopen(fd, "rb")

    def _scan(self) -> dict[str, _Seen]:
        """Every directory and regular file under the mount (links, fifos and devices are skipped)."""
        found: dict[str, _Seen] = {}
        for dirpath, dirnames, filenames, dfd in os.fwalk(self.root, follow_symlinks=False):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in [*dirnames, *filenames]:
                if name.startswith(".vivace-"):
                    continue
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
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


class _NotRegular(OSError):
    """A path that is no longer a regular file."""


def _copy(src: int, dst: int) -> None:
    """Copy a whole file between descriptors in the kernel."""
    size = os.fstat(src).st_size
    offset = 0
    while offset < size:
        sent = os.sendfile(dst, src, offset, min(size - offset, 1 << 30))
        if sent == 0:
            break
        offset += sent


def _sha256_of(f: Any) -> str:
    f.seek(0)
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
