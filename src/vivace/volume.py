"""``vivace.Volume``: a shared, versioned file system that functions mount (Modal's ``modal.Volume``).

Mount it with ``@app.function(volumes={"/data": vol})``: the container sees the volume's latest version
at ``/data`` and writes there like any directory. ``vol.commit()`` in the container publishes its changes
(exit does it too); another container sees them after ``vol.reload()`` or when it starts. From anywhere,
``listdir``, ``read_file``, ``remove_file``, ``copy_files`` and ``batch_upload`` work on the volume
directly. File content is stored by sha256 in the control plane's blob store, so copies are free and the
same bytes are stored once.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote

from vivace import exception as exc
from vivace._sdk.connection import get_client
from vivace._sdk.objects import StorageObject, _Objects
from vivace._sync import iter_async, iter_sync, run_sync, synchronized, twin
from vivace.protocol.volumes import MAX_OPS, PathError, norm_path

CHUNK = 1 << 20


class FileEntryType(enum.IntEnum):
    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3


@dataclass(frozen=True)
class FileEntry:
    """One file or directory of a volume, as ``listdir`` and ``iterdir`` return it."""

    path: str
    type: FileEntryType
    mtime: int
    size: int


def _path(path: Any, *, root_ok: bool = True) -> str:
    try:
        return norm_path(str(path) if isinstance(path, PurePosixPath) else path, root_ok=root_ok)
    except PathError as err:
        raise exc.InvalidError(str(err)) from None


def _entry(raw: dict[str, Any]) -> FileEntry:
    kind = FileEntryType.DIRECTORY if raw["type"] == "directory" else FileEntryType.FILE
    return FileEntry(raw["path"], kind, int(raw["mtime"]), int(raw["size"]))


class Volume(StorageObject):
    """``vol = vivace.Volume.from_name("weights", create_if_missing=True)``; mount it with
    ``volumes={"/data": vol}`` (``vol.read_only()`` for a read-only mount)."""

    _kind = "volume"
    objects = _Objects("volume")
    _read_only = False

    def read_only(self) -> Volume:
        """This volume, mounted read-only where a function names it so."""
        ro = Volume(name=self._name, object_id=self._object_id, create=self._create)
        ro._read_only = True
        return ro

    async def _mount_ref(self) -> dict[str, Any]:
        return {"id": await self._resolve(), "read_only": self._read_only}

    # -- reading -------------------------------------------------------------------------------------
    async def _entries(self, path: str, recursive: bool) -> list[dict[str, Any]]:
        vid = await self._resolve()
        api = await get_client()
        try:
            out = await api.get_json(
                f"/v1/volumes/{vid}/entries", params={"path": path, "recursive": "1" if recursive else "0"}
            )
        except exc.NotFoundError as err:
            if getattr(err, "code", "") == "no_such_path":
                raise FileNotFoundError(f"{path!r} does not exist in {self!r}") from None
            raise
        return list(out["entries"])

    @synchronized
    async def listdir(self, path: str = "/", *, recursive: bool = False) -> list[FileEntry]:
        """The entries of directory ``path`` (every descendant with ``recursive``), or the file itself."""
        return [_entry(e) for e in await self._entries(_path(path), recursive)]

    async def _iterdir(self, path: str, recursive: bool) -> AsyncIterator[FileEntry]:
        for e in await self._entries(_path(path), recursive):
            yield _entry(e)

    def iterdir(self, path: str = "/", *, recursive: bool = True) -> Iterator[FileEntry]:
        return iter_sync(self._iterdir(path, recursive))

    def _iterdir_aio(self, path: str = "/", *, recursive: bool = True) -> AsyncIterator[FileEntry]:
        return iter_async(self._iterdir(path, recursive))

    iterdir = twin(iterdir, _iterdir_aio)  # type: ignore[assignment]

    async def _download(self, path: Any, dest: Path, progress: Callable[[int], None] | None = None) -> None:
        p = _path(path, root_ok=False)
        vid = await self._resolve()
        api = await get_client()
        try:
            await api.download(f"/v1/volumes/{vid}/file?path={quote(p)}", dest, progress=progress)
        except exc.NotFoundError as err:
            if getattr(err, "code", "") == "no_such_path":
                raise FileNotFoundError(f"{p!r} does not exist in {self!r}") from None
            raise
        except exc.ConflictError as err:
            if getattr(err, "code", "") == "is_a_directory":
                raise IsADirectoryError(f"{p!r} is a directory in {self!r}") from None
            raise

    async def _read_file(self, path: Any) -> AsyncIterator[bytes]:
        fd, name = tempfile.mkstemp(prefix="vivace-read-")
        os.close(fd)
        tmp = Path(name)
        try:
            await self._download(path, tmp)
            f = await asyncio.to_thread(tmp.open, "rb")
            try:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    yield chunk
            finally:
                f.close()
        finally:
            os.unlink(tmp)

    def read_file(self, path: str) -> Iterator[bytes]:
        """The content of file ``path``, in chunks (streamed, never whole in memory)."""
        return iter_sync(self._read_file(path))

    def _read_file_aio(self, path: str) -> AsyncIterator[bytes]:
        return iter_async(self._read_file(path))

    read_file = twin(read_file, _read_file_aio)  # type: ignore[assignment]

    @synchronized
    async def read_file_into_fileobj(self, path: str, fileobj: IO[bytes]) -> int:
        """Write file ``path`` into ``fileobj``; return the number of bytes."""
        n = 0
        async for chunk in self._read_file(path):
            await asyncio.to_thread(fileobj.write, chunk)
            n += len(chunk)
        return n

    # -- changing ------------------------------------------------------------------------------------
    async def _commit_ops(self, ops: list[dict[str, Any]]) -> int:
        vid = await self._resolve()
        api = await get_client()
        version = 0
        for start in range(0, len(ops), MAX_OPS):
            try:
                out = await api.post_json(f"/v1/volumes/{vid}/commit", {"ops": ops[start : start + MAX_OPS]})
            except exc.NotFoundError as err:
                if getattr(err, "code", "") == "no_such_path":
                    raise FileNotFoundError(str(err)) from None
                raise
            except exc.ConflictError as err:
                if getattr(err, "code", "") == "exists":
                    raise FileExistsError(str(err)) from None
                raise
            version = int(out["version"])
        return version

    @synchronized
    async def remove_file(self, path: str, *, recursive: bool = False) -> None:
        """Remove file or directory ``path`` (a non-empty directory needs ``recursive=True``)."""
        await self._commit_ops([{"op": "rm", "path": _path(path, root_ok=False), "recursive": recursive}])

    @synchronized
    async def copy_files(self, src_paths: list[str], dst_path: str, *, recursive: bool = False) -> None:
        """Copy files (directories too) inside the volume: into ``dst_path`` when it is a directory (or
        ends with ``/``, or several sources are given), else to it. Content is shared, not duplicated."""
        if isinstance(src_paths, (str, bytes)) or not src_paths:
            raise exc.InvalidError("copy_files takes a non-empty list of source paths")
        dst = _path(dst_path)
        into = str(dst_path).endswith("/") or len(src_paths) > 1
        ops: list[dict[str, Any]] = [{"op": "mkdir", "path": dst}] if into and dst else []
        ops += [{"op": "cp", "src": _path(s, root_ok=False), "dst": dst} for s in src_paths]
        del recursive  # directories are always copied whole, as Modal does
        await self._commit_ops(ops)

    def batch_upload(self, force: bool = False, *, progress: Progress | None = None) -> VolumeUpload:
        """``with vol.batch_upload() as b: b.put_file(...); b.put_directory(...)``: uploaded and committed
        as one version when the block ends (nothing is committed if it raises). Without ``force``, a file
        that already exists is a ``FileExistsError``."""
        return VolumeUpload(self, force, progress)

    # -- a mount (inside a container) ----------------------------------------------------------------
    async def _mount_call(self, action: str) -> None:
        vid = await self._resolve()
        api = await get_client()
        await api.post_json(f"/v1/volumes/{vid}/mount/{action}", {}, timeout=3600)

    @synchronized
    async def commit(self) -> None:
        """Publish this container's changes to the mounted volume as a new version."""
        await self._mount_call("commit")

    @synchronized
    async def reload(self) -> None:
        """Commit this container's changes, then see the volume's latest version at the mount."""
        await self._mount_call("reload")


Progress = Callable[[int], None]
"""Called with each number of bytes a batch upload sends (content already stored counts at once)."""


class VolumeUpload:
    """Files to upload to a volume; sent and committed together when the block ends."""

    def __init__(self, volume: Volume, force: bool, progress: Progress | None = None) -> None:
        self._volume = volume
        self._force = bool(force)
        self._files: list[tuple[Path | IO[bytes], str, int | None]] = []
        self.progress = progress

    def put_file(
        self, local_file: str | os.PathLike[str] | IO[bytes], remote_path: str, mode: int | None = None
    ) -> None:
        """Upload ``local_file`` (a path or a binary file object) to ``remote_path``."""
        remote = _path(remote_path, root_ok=False)
        if mode is not None and (
            isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777
        ):
            raise exc.InvalidError(f"mode must be permission bits (0 to 0o7777), got {mode!r}")
        if isinstance(local_file, (str, os.PathLike)):
            src = Path(local_file)
            if not src.is_file():
                raise FileNotFoundError(f"no such local file: {src}")
            self._files.append((src, remote, mode))
        elif hasattr(local_file, "read"):
            self._files.append((local_file, remote, mode))
        else:
            raise exc.InvalidError(
                f"put_file takes a path or a binary file object, got {type(local_file).__name__}"
            )

    def put_directory(
        self, local_path: str | os.PathLike[str], remote_path: str, recursive: bool = True
    ) -> None:
        """Upload every file under ``local_path`` to the same place under ``remote_path``."""
        src = Path(local_path)
        if not src.is_dir():
            raise NotADirectoryError(f"no such local directory: {src}")
        remote = _path(remote_path)
        files = sorted(src.rglob("*") if recursive else src.iterdir())
        for f in files:
            if f.is_file() and not f.is_symlink():
                rel = f.relative_to(src).as_posix()
                self._files.append((f, f"{remote}/{rel}" if remote else rel, None))

    def total_bytes(self) -> int:
        """What the files given so far add up to (file objects count once read)."""
        return sum(src.stat().st_size for src, _, _ in self._files if isinstance(src, Path))

    def __enter__(self) -> VolumeUpload:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            run_sync(self._flush())

    async def __aenter__(self) -> VolumeUpload:
        return self

    async def __aexit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            await self._flush()

    async def _flush(self) -> int:
        api = await get_client()
        ops: list[dict[str, Any]] = []
        spooled: list[Path] = []
        try:
            for src, remote, mode in self._files:
                if not isinstance(src, Path):  # a file object: spooled to disk while hashing
                    src = await asyncio.to_thread(_spool, src)
                    spooled.append(src)
                    mode = 0o644 if mode is None else mode
                st = src.stat()
                digest = await asyncio.to_thread(_sha256, src)
                try:
                    await api.request("HEAD", f"/v1/blobs/{digest}")
                    if self.progress is not None:
                        self.progress(st.st_size)
                except exc.NotFoundError:
                    await api.put_file(f"/v1/blobs/{digest}", src, progress=self.progress)
                ops.append(
                    {
                        "op": "put",
                        "path": remote,
                        "digest": digest,
                        "size": st.st_size,
                        "mode": stat.S_IMODE(st.st_mode) if mode is None else mode,
                        "mtime": st.st_mtime,
                        "exclusive": not self._force,
                    }
                )
        finally:
            for p in spooled:
                p.unlink(missing_ok=True)
        return await self._volume._commit_ops(ops) if ops else 0


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _spool(fileobj: IO[bytes]) -> Path:
    fd, name = tempfile.mkstemp(prefix="vivace-upload-")
    with os.fdopen(fd, "wb") as out:
        while chunk := fileobj.read(CHUNK):
            if not isinstance(chunk, bytes):
                raise exc.InvalidError("put_file needs a binary file object (open it with 'rb')")
            out.write(chunk)
    return Path(name)
