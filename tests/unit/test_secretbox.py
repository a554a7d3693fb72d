"""The server's secret key and AES-GCM sealing: round trips, tampering, key files and VIVACE_SECRET_KEY."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from vivace.server.config import ServerConfig
from vivace.server.secretbox import KEY_ENV, SealedValueError, SecretBox, SecretKeyError, load_key


def test_seal_and_open_round_trip_with_a_fresh_nonce_each_time() -> None:
    box = SecretBox(os.urandom(32))
    plain = b'{"API_KEY":"sk-123"}'
    one, two = box.seal(plain, "st-a"), box.seal(plain, "st-a")
    assert one != two and plain not in one
    assert box.open(one, "st-a") == plain and box.open(two, "st-a") == plain
    assert "sk-" not in repr(box)


@pytest.mark.parametrize("where", [0, 5, 12, 20, -1])
def test_any_flipped_bit_is_detected(where: int) -> None:
    box = SecretBox(os.urandom(32))
    sealed = bytearray(box.seal(b"value", "st-a"))
    sealed[where] ^= 0x01
    with pytest.raises(SealedValueError):
        box.open(bytes(sealed), "st-a")


def test_other_ids_other_keys_and_truncation_do_not_open() -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal(b"value", "st-a")
    with pytest.raises(SealedValueError):
        box.open(sealed, "st-b")  # moved onto another secret's row
    with pytest.raises(SealedValueError):
        SecretBox(os.urandom(32)).open(sealed, "st-a")
    with pytest.raises(SealedValueError, match="truncated"):
        box.open(sealed[:20], "st-a")


def test_the_digest_is_keyed() -> None:
    key = os.urandom(32)
    assert SecretBox(key).digest(b"x") == SecretBox(key).digest(b"x")
    assert SecretBox(key).digest(b"x") != SecretBox(os.urandom(32)).digest(b"x")
    assert SecretBox(key).digest(b"x") != SecretBox(key).digest(b"y")


def test_the_key_file_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "home" / "secret.key"
    key = load_key(path, {})
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path, {}) == key
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temporary file left


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    load_key(path, {})
    path.chmod(0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        load_key(path, {})
    path.chmod(0o640)
    with pytest.raises(SecretKeyError, match="readable by others"):
        load_key(path, {})


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "secret.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(size))
    os.close(fd)
    with pytest.raises(SecretKeyError, match=f"holds {size} bytes"):
        load_key(path, {})


def test_the_environment_key_wins_and_no_file_is_written(tmp_path: Path) -> None:
    key = os.urandom(32)
    path = tmp_path / "secret.key"
    assert load_key(path, {KEY_ENV: base64.b64encode(key).decode() + "\n"}) == key
    assert not path.exists()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        ("", "0 bytes"),
    ],
)
def test_a_bad_environment_key_is_refused_clearly(tmp_path: Path, raw: str, why: str) -> None:
    with pytest.raises(SecretKeyError, match=why) as err:
        load_key(tmp_path / "secret.key", {KEY_ENV: raw})
    assert KEY_ENV in str(err.value)


def test_the_control_plane_refuses_to_start_with_a_bad_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vivace.server.plane import ControlPlane

    monkeypatch.delenv(KEY_ENV, raising=False)
    config = ServerConfig(store_url=f"sqlite:///{tmp_path / 'db'}", blob_dir=str(tmp_path / "blobs"))
    assert config.secret_key_file == str(tmp_path / "secret.key")
    (tmp_path / "secret.key").write_bytes(os.urandom(32))
    (tmp_path / "secret.key").chmod(0o644)
    with pytest.raises(SecretKeyError):
        ControlPlane(config)
    monkeypatch.setenv(KEY_ENV, "bad")
    with pytest.raises(SecretKeyError, match=KEY_ENV):
        ControlPlane(config)
