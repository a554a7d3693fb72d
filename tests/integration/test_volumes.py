"""Volumes from the client and the CLI through the real control plane (containers mounting volumes are
in tests/isolation/test_volumes.py: they need an OCI runtime)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import vivace
from vivace import exception as exc


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_upload_list_read_copy_remove_from_the_client(cluster: Any, tmp_path: Path) -> None:
    name = _name("v")
    vol = vivace.Volume.from_name(name, create_if_missing=True)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20) * 4)  # 12 MiB, streamed both ways
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a.txt").write_text("a")
    (tmp_path / "tree" / "sub" / "b.txt").write_text("b")
    os.chmod(tmp_path / "tree" / "a.txt", 0o600)
    with vol.batch_upload() as batch:
        batch.put_file(big, "/blobs/big.bin")
        batch.put_directory(tmp_path / "tree", "/tree")
    top = {e.path: e.type for e in vol.listdir("/")}
    assert top == {
        "blobs": vivace.volume.FileEntryType.DIRECTORY,
        "tree": vivace.volume.FileEntryType.DIRECTORY,
    }
    assert sorted(e.path for e in vol.iterdir("/tree")) == ["tree/a.txt", "tree/sub", "tree/sub/b.txt"]
    digest = hashlib.sha256()
    for chunk in vol.read_file("blobs/big.bin"):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
    sink = io.BytesIO()
    assert vol.read_file_into_fileobj("tree/a.txt", sink) == 1 and sink.getvalue() == b"a"
    # copies share the content: nothing is uploaded again
    vol.copy_files(["/tree/a.txt", "/tree/sub"], "/copy")
    assert sorted(e.path for e in vol.listdir("/copy", recursive=True)) == [
        "copy/a.txt",
        "copy/sub",
        "copy/sub/b.txt",
    ]
    vol.remove_file("/copy/a.txt")
    with pytest.raises(FileNotFoundError):
        vol.remove_file("/copy/a.txt")
    with pytest.raises(exc.ConflictError, match="not empty"):
        vol.remove_file("/copy")
    vol.remove_file("/copy", recursive=True)
    assert [e.path for e in vol.listdir("/")] == ["blobs", "tree"]
    # another handle, by id, sees the same files; the volume is listed and deleted by name
    assert [e.path for e in vivace.Volume.from_id(vol.object_id).listdir("/")] == ["blobs", "tree"]
    assert name in vivace.Volume.objects.list()
    vivace.Volume.objects.delete(name)
    with pytest.raises(exc.NotFoundError):
        vivace.Volume.from_name(name).listdir("/")


def test_bad_volume_input_is_a_typed_error(cluster: Any, tmp_path: Path) -> None:
    with pytest.raises(exc.InvalidError):
        vivace.Volume.from_name("bad name")
    with vivace.Volume.ephemeral() as vol:
        with pytest.raises(exc.InvalidError, match=r"'\.\.'"):
            vol.listdir("../../etc")
        batch = vol.batch_upload()
        with pytest.raises(FileNotFoundError):
            batch.put_file(tmp_path / "missing", "/x")
        with pytest.raises(NotADirectoryError):
            batch.put_directory(tmp_path / "missing", "/x")
        with pytest.raises(exc.InvalidError, match="mode"):
            batch.put_file(io.BytesIO(b"x"), "/x", mode=0o77777)
        with pytest.raises(exc.InvalidError):
            batch.put_file(io.BytesIO(b"x"), "/")
        with pytest.raises(exc.InvalidError, match="list of source paths"):
            vol.copy_files("/a", "/b")
        with pytest.raises(exc.InvalidError, match="inside a container"):
            vol.reload()
        # a block that raises commits nothing
        with pytest.raises(RuntimeError), vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"x"), "/x")
            raise RuntimeError("changed my mind")
        assert vol.listdir("/") == []


def test_cli_lists_uploads_downloads_copies_and_removes(cluster: Any, tmp_path: Path) -> None:
    name = _name("cli-v")
    assert _cli("volume", "create", name).returncode == 0
    assert name in _cli("volume", "list").stdout
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one.txt").write_text("one")
    (src / "sub" / "two.txt").write_text("two")
    put = _cli("volume", "put", name, str(src), "/data")
    assert put.returncode == 0, put.stderr
    assert _cli("volume", "put", name, str(src / "one.txt"), "/").returncode == 0
    again = _cli("volume", "put", name, str(src / "one.txt"), "/")
    assert again.returncode != 0 and "already exists" in again.stderr
    assert _cli("volume", "put", name, str(src / "one.txt"), "/", "--force").returncode == 0
    listing = _cli("volume", "ls", name, "/", "-r").stdout
    for path in ("data/", "data/one.txt", "data/sub/two.txt", "one.txt"):
        assert path in listing
    assert _cli("volume", "get", name, "/data/sub/two.txt", "-").stdout == "two"
    out = tmp_path / "out"
    out.mkdir()
    got = _cli("volume", "get", name, "/data", str(out))
    assert got.returncode == 0, got.stderr
    assert (out / "data" / "sub" / "two.txt").read_text() == "two"
    clash = _cli("volume", "get", name, "/data", str(out))
    assert clash.returncode != 0 and "exists" in clash.stderr
    assert _cli("volume", "cp", name, "/one.txt", "/data/sub/").returncode == 0
    assert "data/sub/one.txt" in _cli("volume", "ls", name, "/data/sub").stdout
    not_empty = _cli("volume", "rm", name, "/data")
    assert not_empty.returncode != 0 and "not empty" in not_empty.stderr
    assert _cli("volume", "rm", name, "/data", "-r").returncode == 0
    missing = _cli("volume", "ls", name, "/data")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    assert _cli("volume", "delete", name, "--yes").returncode == 0
    assert name not in vivace.Volume.objects.list()


def test_a_container_reads_volume_files_through_the_volume_never_blobs_by_digest(cluster: Any) -> None:
    name = _name("scoped")
    vol = vivace.Volume.from_name(name, create_if_missing=True)
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"volume content"), "/f.txt")
    digest = hashlib.sha256(b"volume content").hexdigest()
    app = vivace.App("volume-scope")

    @app.function(serialized=True)
    def probe(v: Any, digest: str) -> dict[str, Any]:
        from vivace import exception as exc

        out: dict[str, Any] = {"read": b"".join(v.read_file("f.txt"))}
        try:
            b"".join(vivace.Volume.from_id(v.object_id).read_file("missing.txt"))
        except FileNotFoundError:
            out["missing"] = "FileNotFoundError"
        from vivace._sdk.connection import get_client
        from vivace._sync import run_sync

        async def raw_get() -> int:
            api = await get_client()
            try:
                await api.request("GET", f"/v1/blobs/{digest}", retry_for=0)
            except exc.PermissionDeniedError:
                return 403
            return 200

        out["blob_get"] = run_sync(raw_get())
        with v.batch_upload(force=True) as batch:  # uploads are allowed: content goes in by its digest
            batch.put_file(io.BytesIO(b"from the container"), "/g.txt")
        return out

    with app.run():
        seen = probe.remote(vol, digest)
    assert seen == {"read": b"volume content", "missing": "FileNotFoundError", "blob_get": 403}
    assert b"".join(vol.read_file("g.txt")) == b"from the container"
    vivace.Volume.objects.delete(name)
