"""Dict and Queue through the real control plane: from the client, and from containers that were given
them as arguments or look them up by name."""

from __future__ import annotations

import queue as std_queue
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

import vivace
from vivace import exception as exc
from vivace.protocol import objects as limits


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_dict_from_the_client(cluster: Any) -> None:
    name = _name("d")
    d = vivace.Dict.from_name(name, create_if_missing=True)
    d["a"] = 1
    d[("tuple", 2)] = {"nested": [1, 2]}
    assert d["a"] == 1 and d.get(("tuple", 2)) == {"nested": [1, 2]}
    assert d.get("missing", "dflt") == "dflt" and "a" in d and "missing" not in d
    assert d.put("lock", "me", skip_if_exists=True) is True
    assert d.put("lock", "you", skip_if_exists=True) is False and d["lock"] == "me"
    d.update({"b": 2}, c=3)
    assert len(d) == 5 and d.len() == 5
    assert dict(d.items()) == {"a": 1, ("tuple", 2): {"nested": [1, 2]}, "lock": "me", "b": 2, "c": 3}
    assert sorted(map(str, d.keys())) == sorted(map(str, ["a", ("tuple", 2), "lock", "b", "c"]))
    assert d.pop("b") == 2 and d.pop("b", None) is None
    with pytest.raises(KeyError):
        d.pop("b")
    with pytest.raises(KeyError):
        d["b"]
    del d["c"]
    assert name in vivace.Dict.objects.list()
    # another handle on the same name sees the same data
    assert vivace.Dict.from_name(name)["a"] == 1
    d.clear()
    assert len(d) == 0
    vivace.Dict.objects.delete(name)
    assert name not in vivace.Dict.objects.list()
    with pytest.raises(exc.NotFoundError):
        vivace.Dict.from_name(name).get("a")


def test_bad_dict_input_is_a_typed_error(cluster: Any) -> None:
    with pytest.raises(exc.InvalidError):
        vivace.Dict.from_name("bad name")
    with vivace.Dict.ephemeral() as d:
        with pytest.raises(exc.SerializationError):
            d["lock"] = threading.Lock()
        with pytest.raises(exc.RequestSizeError):
            d["big"] = b"x" * (limits.MAX_VALUE_BYTES + 1)
        assert len(d) == 0  # nothing half-written


def test_ephemeral_objects_are_deleted_when_the_block_ends(cluster: Any) -> None:
    with vivace.Queue.ephemeral() as q:
        q.put(1)
        qid = q.object_id
        assert q.get() == 1
    with pytest.raises(exc.NotFoundError):
        vivace.Queue.from_id(qid).len()
    name = _name("q")
    vivace.Queue.objects.create(name)
    with pytest.raises(exc.AlreadyExistsError):
        vivace.Queue.objects.create(name)
    vivace.Queue.objects.create(name, allow_existing=True)
    vivace.Queue.objects.delete(name)
    vivace.Queue.objects.delete(name, allow_missing=True)
    with pytest.raises(exc.NotFoundError):
        vivace.Queue.objects.delete(name)


def test_queue_from_the_client(cluster: Any) -> None:
    with vivace.Queue.ephemeral() as q:
        q.put_many([1, 2, 3])
        q.put("side", partition="p1")
        assert q.len() == 3 and q.len(total=True) == 4 and q.len(partition="p1") == 1
        assert q.peek(2) == [1, 2]
        assert q.get() == 1 and q.get_many(10) == [2, 3]
        assert q.get(block=False) is None
        with pytest.raises(std_queue.Empty):
            q.get(timeout=0.2)
        assert q.get_many(3, timeout=0.1) == []
        assert q.get(partition="p1") == "side"
        q.put_many(list(range(5)))
        assert list(q.iterate()) == [0, 1, 2, 3, 4]
        q.put("x", partition="p2")
        q.clear(all=True)
        assert q.len(total=True) == 0
        with pytest.raises(exc.InvalidError):
            q.put(1, partition="bad partition")


def test_a_blocked_get_is_woken_by_a_put(cluster: Any) -> None:
    with vivace.Queue.ephemeral() as q:
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
        waiter.start()
        time.sleep(0.3)  # the getter is waiting on the server
        assert waiter.is_alive() and got == []
        q.put("hello")
        waiter.join(30)
        assert got == ["hello"]


def test_functions_use_the_objects_they_were_given(cluster: Any, app_loader: Any) -> None:
    mod = app_loader("storage_app")
    name = _name("shared")
    shared = vivace.Dict.from_name(name, create_if_missing=True)
    shared["greeting"] = "hi from the client"
    with mod.app.run(), vivace.Dict.ephemeral() as d, vivace.Queue.ephemeral() as q:
        assert mod.record.remote(d, q, "k", [1, 2]) == ([1, 2], False)
        assert d["k"] == [1, 2] and q.get(timeout=10) == ("k", [1, 2])
        assert mod.by_name.remote(name) == "hi from the client"
    vivace.Dict.objects.delete(name)


def test_twenty_containers_take_each_item_exactly_once(cluster: Any, app_loader: Any) -> None:
    mod = app_loader("storage_app")
    with mod.app.run(), vivace.Queue.ephemeral() as q, vivace.Dict.ephemeral() as ready:
        q.put_many(list(range(400)))
        results = list(mod.drain.map([q] * 20, [ready] * 20, range(20), [20] * 20))
    assert len({pid for pid, _ in results}) == 20  # twenty containers, all pulling at once
    taken = [x for _pid, items in results for x in items]
    assert sorted(taken) == list(range(400))  # none lost, none twice


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_creates_shows_and_deletes_dicts_and_queues(cluster: Any) -> None:
    dname, qname = _name("cli-d"), _name("cli-q")
    assert _cli("dict", "create", dname).returncode == 0
    vivace.Dict.from_name(dname)["model"] = "llama"
    listed = _cli("dict", "list")
    assert listed.returncode == 0 and dname in listed.stdout
    assert _cli("dict", "get", dname, "model").stdout.strip() == "'llama'"
    missing = _cli("dict", "get", dname, "nope")
    assert missing.returncode != 0 and "no key 'nope'" in missing.stderr
    assert "'llama'" in _cli("dict", "items", dname).stdout
    assert _cli("dict", "delete", dname, "--yes").returncode == 0
    assert dname not in vivace.Dict.objects.list()

    assert _cli("queue", "create", qname).returncode == 0
    again = _cli("queue", "create", qname)
    assert again.returncode != 0 and "already exists" in again.stderr
    vivace.Queue.from_name(qname).put_many(["a", "b"])
    assert _cli("queue", "len", qname).stdout.strip() == "2"
    assert _cli("queue", "peek", qname, "-n", "2").stdout.split() == ["'a'", "'b'"]
    assert _cli("queue", "len", qname).stdout.strip() == "2"  # peeking took nothing
    assert _cli("queue", "clear", qname, "--yes").returncode == 0
    assert vivace.Queue.from_name(qname).len() == 0
    assert _cli("queue", "delete", qname, "--yes").returncode == 0
    bad = _cli("queue", "create", "bad name")
    assert bad.returncode != 0 and "invalid name" in bad.stderr
