"""Contract: API tokens verify only with their own secret, on both stores."""

from __future__ import annotations

from typing import Any

import pytest

from vivace.server.services import tokens


def test_tokens_verify_only_the_right_secret(h: Any) -> None:
    tid, secret = h.w(lambda tx: tokens.create_token(tx, "worker", "w1"))
    other_id, other_secret = h.w(lambda tx: tokens.create_token(tx, "user"))
    assert tid.startswith("tk-") and tid != other_id and secret != other_secret

    def verify(token_id: str, s: str) -> str | None:
        return h.w(lambda tx: tokens.verify(tx, token_id, s))  # type: ignore[no-any-return]

    assert verify(tid, secret) == "worker"
    assert verify(other_id, other_secret) == "user"
    for token_id, wrong in ((tid, secret + "x"), (tid, ""), (tid, other_secret), ("tk-unknown", secret)):
        assert verify(token_id, wrong) is None, (token_id, wrong)
    # only a hash of the secret is stored
    assert h.sql("SELECT secret_hash, label FROM tokens WHERE id = ?", (tid,)) == [
        (tokens.hash_secret(secret), "w1")
    ]
    assert secret not in {r[0] for r in h.sql("SELECT secret_hash FROM tokens")}

    h.w(lambda tx: tx.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (tid,)))
    assert verify(tid, secret) is None
    assert verify(other_id, other_secret) == "user"
    with pytest.raises(ValueError):
        h.w(lambda tx: tokens.create_token(tx, "admin"))


def test_a_login_code_is_spent_once_for_a_session_and_both_expire(h: Any) -> None:
    code_id, code_secret = h.w(lambda tx: tokens.create_token(tx, "login", "dash", ttl=tokens.LOGIN_TTL))
    assert h.w(lambda tx: tokens.verify(tx, code_id, code_secret)) == "login"
    session = h.w(lambda tx: tokens.exchange_login(tx, code_id, code_secret))
    assert session is not None
    assert h.w(lambda tx: tokens.verify(tx, *session)) == "session"
    assert h.w(lambda tx: tokens.exchange_login(tx, code_id, code_secret)) is None  # spent
    # a user token is no login code; a wrong secret is nothing
    uid, usecret = h.w(lambda tx: tokens.create_token(tx, "user"))
    assert h.w(lambda tx: tokens.exchange_login(tx, uid, usecret)) is None
    assert h.w(lambda tx: tokens.exchange_login(tx, code_id, "ts-wrong")) is None
    # expiry: past its time a session is nothing, and is deleted a day later
    later = h.w(lambda tx: tx.now) + tokens.SESSION_TTL + 1

    def at(t: float, op: Any) -> Any:
        def run(tx: Any) -> Any:
            tx.now = t
            return op(tx)

        return run

    assert h.w(at(later, lambda tx: tokens.verify_until(tx, *session))) is None
    assert h.w(at(later + 86400 + 1, tokens.expire)) >= 2  # the session and the code
    assert h.w(lambda tx: tokens.verify(tx, uid, usecret)) == "user"  # tokens without expiry stay
