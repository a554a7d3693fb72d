"""API tokens: ``tk-…`` ids with secrets stored as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from vivace.protocol import ids
from vivace.server.store.base import Tx

KINDS = ("user", "worker", "proxy")  # proxy: only for web endpoints with requires_proxy_auth
# made by the control plane, never asked for: the dashboard's one-time login code and its browser session
INTERNAL_KINDS = ("login", "session")
LOGIN_TTL = 120.0
SESSION_TTL = 12 * 3600.0


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(tx: Tx, kind: str, label: str | None = None, ttl: float | None = None) -> tuple[str, str]:
    if kind not in KINDS + INTERNAL_KINDS:
        raise ValueError(f"token kind must be one of {KINDS}")
    token_id = ids.new_id(ids.TOKEN)
    secret = "ts-" + secrets.token_urlsafe(24)
    tx.execute(
        "INSERT INTO tokens (id, secret_hash, kind, label, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        (token_id, hash_secret(secret), kind, label, tx.now, None if ttl is None else tx.now + ttl),
    )
    return token_id, secret


def verify(tx: Tx, token_id: str, secret: str) -> str | None:
    """Return the token's kind when the secret matches and it is neither revoked nor expired, else None."""
    found = verify_until(tx, token_id, secret)
    return None if found is None else found[0]


def verify_until(tx: Tx, token_id: str, secret: str) -> tuple[str, float | None] | None:
    """The token's kind and when it expires (None: never), or None when it does not hold."""
    row = tx.fetchone("SELECT secret_hash, kind, revoked, expires_at FROM tokens WHERE id = ?", (token_id,))
    expected = row[0] if row else hash_secret("")
    ok = hmac.compare_digest(expected, hash_secret(secret))
    if row is None or not ok or row[2] or (row[3] is not None and float(row[3]) <= tx.now):
        return None
    return str(row[1]), None if row[3] is None else float(row[3])


def exchange_login(tx: Tx, token_id: str, secret: str) -> tuple[str, str] | None:
    """Spend a one-time login code: a new browser session (id, secret), or None if the code does not hold."""
    found = verify_until(tx, token_id, secret)
    if found is None or found[0] != "login":
        return None
    if tx.execute("UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0", (token_id,)) != 1:
        return None  # spent by a concurrent request
    return create_token(tx, "session", "dashboard", ttl=SESSION_TTL)


def revoke(tx: Tx, token_id: str) -> None:
    tx.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (token_id,))


def expire(tx: Tx) -> int:
    """Delete login codes and sessions that expired a day ago or more."""
    return tx.execute("DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at < ?", (tx.now - 86400,))
