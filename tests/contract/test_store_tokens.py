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
