"""The server's secret key and what it does: seal and open secrets' values, and digest them.

Values are sealed with AES-256-GCM: ``seal(plaintext, aad)`` returns ``nonce (12 bytes) || ciphertext
and tag``, with the secret's object id as associated data, so a sealed value copied onto another row
does not open. The key never enters the database: it is ``VIVACE_SECRET_KEY`` (base64 of 32 bytes) or
the file ``secret.key`` in the server's home (32 random bytes, created 0600 on first start). Every
replica of one control plane needs the same key.

The digest that lets an app's redeploys share an inline secret is an HMAC-SHA256 under a key derived
from the master key, so the database holds nothing to test a guessed value against.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ENV = "VIVACE_SECRET_KEY"
KEY_FILE = "secret.key"


class SecretKeyError(Exception):
    """The server's secret key is missing, malformed or not private: the server refuses to start."""


class SealedValueError(Exception):
    """A sealed value does not open under this key (tampered with, truncated, or another key's)."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"the secret key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self._digest_key = hmac.new(key, b"vivace secret digest v1", hashlib.sha256).digest()

    def seal(self, plaintext: bytes, aad: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad.encode())

    def open(self, sealed: bytes, aad: str) -> bytes:
        if len(sealed) < NONCE_BYTES + 16:
            raise SealedValueError("sealed value is truncated")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad.encode())
        except InvalidTag:
            raise SealedValueError(
                "sealed value does not open under this server's key (changed key, or tampered with)"
            ) from None

    def digest(self, data: bytes) -> str:
        return hmac.new(self._digest_key, data, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"


def load_key(key_file: Path, environ: Mapping[str, str] | None = None) -> bytes:
    """The key from ``VIVACE_SECRET_KEY`` if set, else from ``key_file`` (created when missing)."""
    env = os.environ if environ is None else environ
    raw = env.get(KEY_ENV)
    if raw is not None:
        return _decode_env_key(raw)
    try:
        return _read_key_file(key_file)
    except FileNotFoundError:
        pass
    key = os.urandom(KEY_BYTES)
    tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.tmp")
    try:
        key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, key_file)  # whole or absent: a replica starting beside this one reads a full key
    except FileExistsError:  # another replica on the same home wrote it first
        return _read_key_file(key_file)
    except OSError as err:
        raise SecretKeyError(f"cannot create the secret key {key_file}: {err.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _decode_env_key(raw: str) -> bytes:
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretKeyError(
            f"{KEY_ENV} is not valid base64 (expected base64 of {KEY_BYTES} bytes)"
        ) from None
    if len(key) != KEY_BYTES:
        raise SecretKeyError(
            f"{KEY_ENV} decodes to {len(key)} bytes; it must be base64 of {KEY_BYTES} random bytes "
            "(e.g. `head -c 32 /dev/urandom | base64`)"
        )
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise SecretKeyError(f"cannot read the secret key {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SecretKeyError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise SecretKeyError(
                f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):03o}); "
                f"it must be private to the server's user: chmod 600 {path}"
            )
        key = f.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise SecretKeyError(
            f"{path} holds {max(len(key), st.st_size)} bytes; a secret key is exactly {KEY_BYTES} (restore the right file, "
            "or remove it only if no secret was ever stored: secrets sealed under the old key are lost)"
        )
    return key
