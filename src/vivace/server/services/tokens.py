"""API tokens: ``tk-…`` ids with secrets stored as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from vivace.protocol import ids
from vivace.server.store.base import Tx

KINDS = ("user", "worker", "proxy")  # proxy: only for web endpoints with requires_proxy_auth


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(tx: Tx, kind: str, label: str | None = None) -> tuple[str, str]:
    if kind not in KINDS:
        raise ValueError(f"token kind must be one of {KINDS}")
    token_id = ids.new_id(ids.TOKEN)
    secret = "ts-" + secrets.token_urlsafe(24)
    tx.execute(
        "INSERT INTO tokens (id, secret_hash, kind, label, created_at) VALUES (?, ?, ?, ?, ?)",
        (token_id, hash_secret(secret), kind, label, tx.now),
    )
    return token_id, secret


def verify(tx: Tx, token_id: str, secret: str) -> str | None:
    """Return the token's kind when the secret matches, else None."""
    row = tx.fetchone("SELECT secret_hash, kind, revoked FROM tokens WHERE id = ?", (token_id,))
    expected = row[0] if row else hash_secret("")
    ok = hmac.compare_digest(expected, hash_secret(secret))
    if row is None or not ok or row[2]:
        return None
    return str(row[1])
