"""Blobs stream to and from the control plane: image layers run to gigabytes, so neither side holds a
whole one in memory, and a body that does not hash to its address never becomes a blob."""

import asyncio
import hashlib
import os

import pytest

from vivace import exception as exc
from vivace.client.http import ApiClient, Credentials

pytestmark = pytest.mark.timeout(60)


def _client(cluster):
    return ApiClient(cluster.url, Credentials.parse(cluster.user_token), retry_for=2)


def _leftovers(cluster):
    blob_dir = cluster.plane.blobs.root
    return [p for p in blob_dir.rglob(".tmp-*")]


def test_a_file_streams_up_and_down_unchanged(cluster, tmp_path):
    src = tmp_path / "layer.bin"
    src.write_bytes(os.urandom(3 << 20) * 3)  # 9 MiB: several chunks each way
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "back.bin"

    async def go():
        api = _client(cluster)
        try:
            first = await api.put_file(f"/v1/blobs/{digest}", src)
            again = await api.put_file(f"/v1/blobs/{digest}", src)  # content-addressed: accepted, unchanged
            await api.download(f"/v1/blobs/{digest}", dest)
            return first, again
        finally:
            await api.aclose()

    first, again = asyncio.run(go())
    assert first == again == {"sha256": digest, "size": 9 << 20}
    assert dest.read_bytes() == src.read_bytes()
    assert _leftovers(cluster) == []


def test_a_body_that_does_not_hash_to_its_address_is_refused_and_leaves_nothing(cluster, tmp_path):
    src = tmp_path / "liar.bin"
    src.write_bytes(b"not what the address says" * 1000)
    wrong = "ab" * 32

    async def go():
        api = _client(cluster)
        try:
            with pytest.raises(exc.InvalidError, match="hashes to"):
                await api.put_file(f"/v1/blobs/{wrong}", src)
            with pytest.raises(exc.NotFoundError):
                await api.download(f"/v1/blobs/{wrong}", tmp_path / "missing.bin")
        finally:
            await api.aclose()

    asyncio.run(go())
    assert not cluster.plane.blobs.exists(wrong) and _leftovers(cluster) == []


def test_the_control_plane_deletes_layer_blobs_no_image_uses(cluster, tmp_path):
    data = os.urandom(4096)
    digest = cluster.plane.blobs.put(data)
    os.utime(cluster.plane.blobs.path(digest), (0, 0))  # uploaded long ago
    cluster.plane.store.write_sync(
        lambda tx: tx.execute(
            "INSERT INTO layers (key, digest, size, created_at) VALUES (?, ?, ?, 0)", ("f" * 64, digest, 4096)
        )
    )
    assert asyncio.run(cluster.plane.collect_images()) == [digest]
    assert not cluster.plane.blobs.exists(digest)
    assert (
        cluster.plane.store.write_sync(
            lambda tx: tx.fetchall("SELECT key FROM layers WHERE key = ?", ("f" * 64,))
        )
        == []
    )


def test_a_blob_uploaded_again_while_it_is_collected_stays(cluster):
    import time

    blobs = cluster.plane.blobs
    digest = blobs.put(os.urandom(1024))
    os.utime(blobs.path(digest), (0, 0))
    collection_started = time.time() - 1
    blobs.touch(digest)  # a rebuild uploads the same layer after the collection chose it
    assert blobs.delete(digest, unless_used_since=collection_started) is False
    assert blobs.exists(digest)
    assert blobs.delete(digest) is True and not blobs.exists(digest)
