"""Contract: Dict and Queue storage behave the same on SQLite and Postgres."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from vivace.protocol import objects as limits
from vivace.server.errors import Conflict, Invalid, NotFound, TooLarge
from vivace.server.services import storage


def _dict(h: Any, name: str = "d") -> str:
    return str(h.w(lambda tx: storage.create(tx, "dict", name)))


def _queue(h: Any, name: str = "q") -> str:
    return str(h.w(lambda tx: storage.create(tx, "queue", name)))


# -- objects ----------------------------------------------------------------------------------------


def test_named_objects_are_created_once_listed_and_deleted_with_their_contents(h: Any) -> None:
    did = _dict(h, "weights")
    assert did.startswith("di-")
    with pytest.raises(Conflict):
        h.w(lambda tx: storage.create(tx, "dict", "weights"))
    assert h.w(lambda tx: storage.lookup(tx, "dict", "weights")) == (did, False)
    # the same name may name a Queue: names are per kind
    qid, created = h.w(lambda tx: storage.lookup(tx, "queue", "weights", create_if_missing=True))
    assert created and qid.startswith("qu-")
    with pytest.raises(NotFound):
        h.w(lambda tx: storage.lookup(tx, "dict", "missing"))
    h.w(lambda tx: storage.dict_put(tx, did, [(b"k", b"v")]))
    assert [n for n, _, _ in h.w(lambda tx: storage.list_named(tx, "dict"))] == ["weights"]
    assert h.w(lambda tx: storage.delete(tx, "dict", "weights")) == did
    assert h.one("SELECT COUNT(*) FROM dict_entries WHERE dict_id = ?", (did,)) == 0
    with pytest.raises(NotFound):
        h.w(lambda tx: storage.dict_get(tx, did, b"k"))


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "-lead", "sl/ash", 7])
def test_bad_names_and_kinds_are_refused(h: Any, bad: Any) -> None:
    with pytest.raises(Invalid):
        h.w(lambda tx: storage.lookup(tx, "dict", bad, create_if_missing=True))
    assert h.one("SELECT COUNT(*) FROM objects") == 0


def test_unknown_kind_is_refused(h: Any) -> None:
    with pytest.raises(Invalid):
        h.w(lambda tx: storage.create(tx, "volumes", "x"))


def test_ephemeral_objects_live_while_heartbeating(h: Any) -> None:
    qid = h.w(lambda tx: storage.create_ephemeral(tx, "queue"))
    h.w(lambda tx: storage.queue_put(tx, qid, [b"a"]))
    h.w(lambda tx: storage.heartbeat(tx, qid))
    assert h.w(lambda tx: storage.collect_ephemeral(tx, 60.0)) == []
    assert h.w(lambda tx: storage.collect_ephemeral(tx, -1.0)) == [qid]  # lapsed: gone with its items
    assert h.one("SELECT COUNT(*) FROM queue_items") == 0
    with pytest.raises(NotFound):
        h.w(lambda tx: storage.heartbeat(tx, qid))
    assert h.w(lambda tx: storage.list_named(tx, "queue")) == []


# -- Dict -------------------------------------------------------------------------------------------


def test_dict_put_get_pop_len_items_clear(h: Any) -> None:
    did = _dict(h)
    assert h.w(lambda tx: storage.dict_put(tx, did, [(b"a", b"1"), (b"b", b"2")])) == 2
    assert h.w(lambda tx: storage.dict_put(tx, did, [(b"a", b"3")])) == 1  # overwrite
    assert h.w(lambda tx: storage.dict_get(tx, did, b"a")) == b"3"
    assert h.w(lambda tx: storage.dict_get(tx, did, b"zz")) is None
    assert h.w(lambda tx: storage.dict_len(tx, did)) == 2
    page = h.w(lambda tx: storage.dict_items(tx, did, "", 1))
    rest = h.w(lambda tx: storage.dict_items(tx, did, page[-1][0], 10))
    assert sorted((k, v) for _, k, v in page + rest) == [(b"a", b"3"), (b"b", b"2")]
    assert h.w(lambda tx: storage.dict_pop(tx, did, b"b")) == b"2"
    assert h.w(lambda tx: storage.dict_pop(tx, did, b"b")) is None
    assert h.w(lambda tx: storage.dict_clear(tx, did)) == 1
    assert h.w(lambda tx: storage.dict_len(tx, did)) == 0


def test_dict_limits_are_typed_errors_and_write_nothing(h: Any) -> None:
    did = _dict(h)
    big = b"x" * (limits.MAX_VALUE_BYTES + 1)
    with pytest.raises(TooLarge):
        h.w(lambda tx: storage.dict_put(tx, did, [(b"ok", b"1"), (b"k", big)]))
    with pytest.raises(TooLarge):
        h.w(lambda tx: storage.dict_put(tx, did, [(b"k" * (limits.MAX_KEY_BYTES + 1), b"1")]))
    assert h.w(lambda tx: storage.dict_len(tx, did)) == 0


def test_skip_if_exists_is_atomic_under_contention(h: Any) -> None:
    """Twenty threads race to take one key: exactly one wins, as a lock needs."""
    did = _dict(h)
    wins: list[int] = []
    start = threading.Barrier(20)

    def take(i: int) -> None:
        start.wait()
        wins.append(
            h.w(lambda tx: storage.dict_put(tx, did, [(b"lock", str(i).encode())], skip_if_exists=True))
        )

    threads = [threading.Thread(target=take, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [0] * 19 + [1]
    holder = h.w(lambda tx: storage.dict_get(tx, did, b"lock"))
    assert holder is not None and int(holder) in range(20)


# -- Queue ------------------------------------------------------------------------------------------


def test_queue_is_fifo_per_partition_and_get_removes(h: Any) -> None:
    qid = _queue(h)
    h.w(lambda tx: storage.queue_put(tx, qid, [b"1", b"2", b"3"]))
    h.w(lambda tx: storage.queue_put(tx, qid, [b"p"], partition="side"))
    assert h.w(lambda tx: storage.queue_len(tx, qid)) == 3
    assert h.w(lambda tx: storage.queue_len(tx, qid, total=True)) == 4
    assert h.w(lambda tx: storage.queue_peek(tx, qid, 2)) == [b"1", b"2"]
    assert h.w(lambda tx: storage.queue_get(tx, qid, 2)) == [b"1", b"2"]
    assert h.w(lambda tx: storage.queue_get(tx, qid, 5)) == [b"3"]
    assert h.w(lambda tx: storage.queue_get(tx, qid, 5)) == []
    assert h.w(lambda tx: storage.queue_get(tx, qid, 1, "side")) == [b"p"]
    h.w(lambda tx: storage.queue_put(tx, qid, [b"x"], partition="side"))
    h.w(lambda tx: storage.queue_clear(tx, qid, "side"))
    assert h.w(lambda tx: storage.queue_len(tx, qid, total=True)) == 0


def test_an_expired_partition_reads_empty_and_is_purged(h: Any) -> None:
    qid = _queue(h)
    h.w(lambda tx: storage.queue_put(tx, qid, [b"old"], partition="p", ttl=60))
    h.w(lambda tx: tx.execute("UPDATE queue_partitions SET expires_at = 0"))  # its TTL ran out
    assert h.w(lambda tx: storage.queue_len(tx, qid, total=True)) == 0
    assert h.w(lambda tx: storage.queue_get(tx, qid, 1, "p")) == []
    h.w(lambda tx: storage.queue_put(tx, qid, [b"new"], partition="p"))
    assert h.w(lambda tx: storage.queue_get(tx, qid, 5, "p")) == [b"new"]  # the old item never comes back
    h.w(lambda tx: storage.queue_put(tx, qid, [b"again"], partition="q2", ttl=60))
    h.w(lambda tx: tx.execute("UPDATE queue_partitions SET expires_at = 0"))
    assert h.w(storage.expire_partitions) == 2
    assert h.one("SELECT COUNT(*) FROM queue_items") == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"partition": ""}, Invalid),
        ({"partition": "a b"}, Invalid),
        ({"ttl": 0}, Invalid),
        ({"ttl": limits.MAX_PARTITION_TTL + 1}, Invalid),
        ({"values": [b"x"] * (limits.MAX_BATCH + 1)}, TooLarge),
        ({"values": [b"ok", b"x" * (limits.MAX_VALUE_BYTES + 1)]}, TooLarge),
    ],
)
def test_bad_queue_puts_are_typed_errors_and_add_nothing(h: Any, kwargs: dict[str, Any], error: type) -> None:
    qid = _queue(h)
    args = {"values": [b"v"], **kwargs}
    with pytest.raises(error):
        h.w(lambda tx: storage.queue_put(tx, qid, **args))
    assert h.one("SELECT COUNT(*) FROM queue_items") == 0


def test_each_item_goes_to_exactly_one_of_twenty_getters(h: Any) -> None:
    qid = _queue(h)
    for start in range(0, 500, 100):
        h.w(lambda tx, s=start: storage.queue_put(tx, qid, [str(i).encode() for i in range(s, s + 100)]))
    got: list[bytes] = []
    lock = threading.Lock()

    def drain() -> None:
        while True:
            items = h.w(lambda tx: storage.queue_get(tx, qid, 7))
            if not items:
                return
            with lock:
                got.extend(items)

    threads = [threading.Thread(target=drain) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(x) for x in got) == list(range(500))  # none lost, none twice
