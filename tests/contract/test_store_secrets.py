"""Contract: secrets behave the same on SQLite and Postgres, and are never stored in the clear."""

from __future__ import annotations

import os
from typing import Any

import pytest

from vivace.protocol import secrets as rules
from vivace.server.errors import Conflict, Gone, Invalid, NotFound
from vivace.server.secretbox import SecretBox
from vivace.server.services import apps, secrets, storage, workers

VALUE = "sk-live-7f3a9c1e5b"  # a value no other test writes, to look for in the database


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(os.urandom(32))


def _app(h: Any, state: str = "ephemeral", name: str | None = None) -> str:
    return str(h.w(lambda tx: apps.create_app(tx, name, state, "test"))["app_id"])


def _env(h: Any, box: SecretBox, *ids: str) -> dict[str, str]:
    return h.w(lambda tx: secrets.env_for(tx, box, list(ids)))  # type: ignore[no-any-return]


def test_named_secrets_are_created_once_overwritten_on_request_and_sealed(h: Any, box: SecretBox) -> None:
    sid, created = h.w(lambda tx: secrets.create(tx, box, "openai", {"API_KEY": VALUE}))
    assert created and sid.startswith("st-")
    with pytest.raises(Conflict) as err:
        h.w(lambda tx: secrets.create(tx, box, "openai", {"API_KEY": "other"}))
    assert err.value.code == "already_exists"
    assert _env(h, box, sid) == {"API_KEY": VALUE}  # the refused create changed nothing
    again, created = h.w(lambda tx: secrets.create(tx, box, "openai", {"API_KEY": "v2"}, overwrite=True))
    assert (again, created) == (sid, False)
    assert _env(h, box, sid) == {"API_KEY": "v2"}
    # listed like any named object: a name, an id and a time
    assert [n for n, _, _ in h.w(lambda tx: storage.list_named(tx, "secret"))] == ["openai"]


def test_the_sealed_column_holds_no_plaintext(h: Any, box: SecretBox) -> None:
    sid, _ = h.w(lambda tx: secrets.create(tx, box, "db", {"PASSWORD": VALUE, "USER": "admin"}))
    app_id = _app(h)
    iid = h.w(lambda tx: secrets.create_inline(tx, box, app_id, {"TOKEN": VALUE}))
    rows = h.sql("SELECT object_id, app_id, digest, sealed FROM secrets ORDER BY object_id")
    assert {r[0] for r in rows} == {sid, iid}
    for row in rows:
        blob = bytes(row[3])
        assert VALUE.encode() not in blob and b"PASSWORD" not in blob and b"TOKEN" not in blob
        assert VALUE not in str(row[2])
    # nothing else in the database holds the value either
    for table in ("objects", "secrets"):
        for row in h.sql(f"SELECT * FROM {table}"):
            assert all(VALUE.encode() not in (c if isinstance(c, bytes) else str(c).encode()) for c in row)


def test_a_sealed_value_moved_to_another_row_does_not_open(h: Any, box: SecretBox) -> None:
    a, _ = h.w(lambda tx: secrets.create(tx, box, "a", {"K": "a"}))
    b, _ = h.w(lambda tx: secrets.create(tx, box, "b", {"K": "b"}))
    sealed_a = h.one("SELECT sealed FROM secrets WHERE object_id = ?", (a,))
    h.w(lambda tx: tx.execute("UPDATE secrets SET sealed = ? WHERE object_id = ?", (bytes(sealed_a), b)))
    with pytest.raises(secrets.SecretUnavailable) as err:
        _env(h, box, b)
    assert err.value.secret_id == b and "does not open" in err.value.message
    # nor under another server's key
    with pytest.raises(secrets.SecretUnavailable):
        _env(h, SecretBox(os.urandom(32)), a)


def test_lookup_checks_required_keys_and_names_only_the_missing_keys(h: Any, box: SecretBox) -> None:
    sid, _ = h.w(lambda tx: secrets.create(tx, box, "creds", {"USER": "u", "PASSWORD": VALUE}))
    assert h.w(lambda tx: secrets.lookup(tx, box, "creds")) == sid
    assert h.w(lambda tx: secrets.lookup(tx, box, "creds", ["USER", "PASSWORD"])) == sid
    with pytest.raises(NotFound) as err:
        h.w(lambda tx: secrets.lookup(tx, box, "creds", ["USER", "TOKEN", "HOST"]))
    assert err.value.code == "missing_keys"
    assert "TOKEN, HOST" in err.value.message and VALUE not in err.value.message
    assert "USER" not in err.value.message.split(":")[-1]
    with pytest.raises(NotFound):
        h.w(lambda tx: secrets.lookup(tx, box, "absent"))
    with pytest.raises(Invalid):
        h.w(lambda tx: secrets.lookup(tx, box, "creds", ["not a key"]))


@pytest.mark.parametrize(
    "env",
    [
        {"1BAD": "v"},
        {"HAS-DASH": "v"},
        {"VIVACE_TOKEN": "v"},
        {"modal_x": "v"},
        {"K": 1},
        {"K": None},
        {"K": "nul\x00"},
        {f"K{i}": "v" for i in range(rules.MAX_KEYS + 1)},
        {"BIG": "x" * rules.MAX_BYTES},
        ["K=v"],
    ],
)
def test_bad_environments_are_refused_without_echoing_values(h: Any, box: SecretBox, env: Any) -> None:
    with pytest.raises(Invalid) as err:
        h.w(lambda tx: secrets.create(tx, box, "bad", env))
    assert "x" * 100 not in err.value.message
    app_id = _app(h)
    with pytest.raises(Invalid):
        h.w(lambda tx: secrets.create_inline(tx, box, app_id, env))
    assert h.one("SELECT COUNT(*) FROM objects") == 0 and h.one("SELECT COUNT(*) FROM secrets") == 0


def test_limits_are_inclusive(h: Any, box: SecretBox) -> None:
    env = {f"K{i}": "" for i in range(rules.MAX_KEYS)}
    sid, _ = h.w(lambda tx: secrets.create(tx, box, "many", env))
    assert len(_env(h, box, sid)) == rules.MAX_KEYS
    big = {"B": "x" * (rules.MAX_BYTES - 1)}
    sid, _ = h.w(lambda tx: secrets.create(tx, box, "big", big))
    assert _env(h, box, sid) == big


def test_inline_secrets_are_reused_per_app_by_their_values(h: Any, box: SecretBox) -> None:
    app_id, other = _app(h, "deployed", "svc"), _app(h)
    first = h.w(lambda tx: secrets.create_inline(tx, box, app_id, {"A": "1", "B": "2"}))
    # the same values (in any order) for the same app: the same secret, as on a redeploy
    assert h.w(lambda tx: secrets.create_inline(tx, box, app_id, {"B": "2", "A": "1"})) == first
    changed = h.w(lambda tx: secrets.create_inline(tx, box, app_id, {"A": "1", "B": "3"}))
    elsewhere = h.w(lambda tx: secrets.create_inline(tx, box, other, {"A": "1", "B": "2"}))
    assert len({first, changed, elsewhere}) == 3
    # inline secrets have no name: not listed, not found by name, never collected as ephemeral
    assert h.w(lambda tx: storage.list_named(tx, "secret")) == []
    assert h.one("SELECT COUNT(*) FROM objects WHERE heartbeat_at IS NOT NULL") == 0
    assert h.w(lambda tx: storage.collect_ephemeral(tx, -1000.0)) == []
    assert _env(h, box, first) == {"A": "1", "B": "2"}
    with pytest.raises(NotFound):
        h.w(lambda tx: secrets.create_inline(tx, box, "ap-missing", {"A": "1"}))


def test_env_for_merges_in_order_later_wins(h: Any, box: SecretBox) -> None:
    a, _ = h.w(lambda tx: secrets.create(tx, box, "a", {"X": "a", "ONLY_A": "1"}))
    b, _ = h.w(lambda tx: secrets.create(tx, box, "b", {"X": "b", "ONLY_B": "2"}))
    assert _env(h, box, a, b) == {"X": "b", "ONLY_A": "1", "ONLY_B": "2"}
    assert _env(h, box, b, a)["X"] == "a"
    assert _env(h, box) == {}


def test_stopped_apps_lose_their_inline_secrets_and_named_ones_stay(h: Any, box: SecretBox) -> None:
    live, stopping = _app(h), _app(h)
    named, _ = h.w(lambda tx: secrets.create(tx, box, "keep", {"K": "v"}))
    kept = h.w(lambda tx: secrets.create_inline(tx, box, live, {"K": "live"}))
    doomed = h.w(lambda tx: secrets.create_inline(tx, box, stopping, {"K": "gone"}))
    assert h.w(secrets.collect_inline) == []
    h.w(lambda tx: apps.stop_app(tx, stopping, "test"))
    assert h.w(secrets.collect_inline) == [doomed]
    assert h.one("SELECT COUNT(*) FROM objects WHERE id = ?", (doomed,)) == 0
    assert _env(h, box, kept) == {"K": "live"} and _env(h, box, named) == {"K": "v"}
    with pytest.raises(secrets.SecretUnavailable, match="was deleted"):
        _env(h, box, doomed)
    with pytest.raises(Gone):
        h.w(lambda tx: secrets.create_inline(tx, box, stopping, {"K": "again"}))


def test_a_deleted_secret_is_gone_and_its_name_free(h: Any, box: SecretBox) -> None:
    sid, _ = h.w(lambda tx: secrets.create(tx, box, "temp", {"K": "v"}))
    assert h.w(lambda tx: storage.delete(tx, "secret", "temp")) == sid
    assert h.one("SELECT COUNT(*) FROM secrets") == 0
    with pytest.raises(secrets.SecretUnavailable, match=f"{sid} was deleted"):
        _env(h, box, sid)
    with pytest.raises(NotFound):
        h.w(lambda tx: secrets.lookup(tx, box, "temp"))
    new, created = h.w(lambda tx: secrets.create(tx, box, "temp", {"K": "v2"}))
    assert created and new != sid


def test_a_container_start_carries_its_secrets_and_one_whose_secret_is_gone_fails(
    h: Any, box: SecretBox
) -> None:
    a, _ = h.w(lambda tx: secrets.create(tx, box, "a", {"X": "a", "Y": "a"}))
    b, _ = h.w(lambda tx: secrets.create(tx, box, "b", {"X": "b"}))
    fid = h.function("uses", secrets=[a, b], env={"X": "env", "Z": "env"})
    h.call(fid, 1)
    ((cid, _),) = h.containers(1)
    wid = h.worker()

    def poll(tx: Any) -> tuple[Any, dict[str, dict[str, str]], set[str]]:
        res = workers.poll(tx, wid, [])
        envs, failed = secrets.attach_envs(tx, box, wid, res.start)
        return res, envs, failed

    res, envs, failed = h.w(poll)
    assert [s.container_id for s in res.start] == [cid] and failed == set()
    assert envs == {cid: {"X": "b", "Y": "a"}}  # env= is the function's; the worker applies these after
    # the secret is deleted before the worker holds the container: it is not started, and says why
    h.w(lambda tx: storage.delete(tx, "secret", "b"))
    res, envs, _ = h.w(poll)
    assert res.start == [] and envs == {}
    row = h.sql("SELECT state, stop_reason FROM containers WHERE id = ?", (cid,))[0]
    assert row[0] == "stopped" and f"secret {b} was deleted" in row[1]
    logged = [r[0] for r in h.sql("SELECT line FROM logs WHERE container_id = ?", (cid,))]
    assert any(f"secret {b} was deleted" in ln for ln in logged)
    assert h.pending_count(fid) == 1  # its input waits for another container (or fails after a few)


def test_a_build_gets_the_named_secrets_of_the_steps_it_still_builds(h: Any, box: SecretBox) -> None:
    h.w(lambda tx: secrets.create(tx, box, "a", {"X": "a", "ONLY_A": "1"}))
    h.w(lambda tx: secrets.create(tx, box, "reg", {"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": VALUE}))
    steps = [
        {"kind": "from_registry", "reference": "python:3", "auth_secret": "reg"},
        {"kind": "run_commands", "commands": ["true"], "secrets": ["a"]},
        {"kind": "run_commands", "commands": ["true"]},
        {"kind": "pip_install", "packages": ["six"], "secrets": ["a"]},
    ]
    todo = [{"digest": None}] * 4
    envs = h.w(lambda tx: secrets.build_envs(tx, box, steps, todo))
    assert envs == {
        "0": {"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": VALUE},
        "1": {"X": "a", "ONLY_A": "1"},
        "3": {"X": "a", "ONLY_A": "1"},
    }
    cached = [{"digest": "d" * 64}, {"digest": "d" * 64}, {"digest": None}, {"digest": None}]
    assert set(h.w(lambda tx: secrets.build_envs(tx, box, steps, cached))) == {"3"}  # built steps need none
    h.w(lambda tx: storage.delete(tx, "secret", "a"))
    with pytest.raises(NotFound, match="step 2 \\(run_commands\\) needs secret 'a'"):
        h.w(lambda tx: secrets.build_envs(tx, box, steps, todo))
