"""Contract: Volume versions and files behave the same on SQLite and Postgres."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from vivace.protocol.volumes import PathError, check_ops, norm_path
from vivace.server.errors import Conflict, NotFound
from vivace.server.services import storage, volumes

A = "a" * 64
B = "b" * 64


def _vol(h: Any, name: str = "v") -> str:
    return str(h.w(lambda tx: storage.create(tx, "volume", name)))


def _commit(h: Any, vid: str, *ops: dict[str, Any]) -> int:
    checked = check_ops(list(ops))
    return int(h.w(lambda tx: volumes.commit(tx, vid, checked)))


def _put(path: str, digest: str = A, size: int = 3, **kw: Any) -> dict[str, Any]:
    return {"op": "put", "path": path, "digest": digest, "size": size, "mode": 0o644, "mtime": 1.0e9, **kw}


def _ls(h: Any, vid: str, path: str = "", recursive: bool = False) -> list[tuple[str, str]]:
    _, items = h.w(lambda tx: volumes.entries(tx, vid, path, recursive))
    return [(e["path"], e["type"]) for e in items]


def test_a_new_volume_is_empty_at_version_zero(h: Any) -> None:
    vid = _vol(h)
    assert vid.startswith("vo-")
    assert h.w(lambda tx: volumes.manifest(tx, vid)) == (0, [])


def test_puts_create_parents_and_each_commit_is_a_version(h: Any) -> None:
    vid = _vol(h)
    assert _commit(h, vid, _put("/models/llama/w.bin"), _put("top.txt", B, 5)) == 1
    assert _ls(h, vid) == [("models", "directory"), ("top.txt", "file")]
    assert _ls(h, vid, "models", recursive=True) == [
        ("models/llama", "directory"),
        ("models/llama/w.bin", "file"),
    ]
    # a file path lists the file itself
    (entry,) = h.w(lambda tx: volumes.entries(tx, vid, "top.txt", False))[1]
    assert (entry["digest"], entry["size"], entry["version"]) == (B, 5, 1)
    assert _commit(h, vid, _put("top.txt", A, 3)) == 2
    (entry,) = h.w(lambda tx: volumes.entries(tx, vid, "top.txt", False))[1]
    assert (entry["digest"], entry["version"]) == (A, 2)
    with pytest.raises(NotFound):
        h.w(lambda tx: volumes.entries(tx, vid, "nope", False))


def test_exclusive_put_refuses_an_existing_file_and_writes_nothing(h: Any) -> None:
    vid = _vol(h)
    _commit(h, vid, _put("a.txt"))
    with pytest.raises(Conflict) as err:
        _commit(h, vid, _put("b.txt"), _put("a.txt", B, exclusive=True))
    assert err.value.code == "exists"
    # the failed commit rolled back entirely: no b.txt, no new version
    assert _ls(h, vid) == [("a.txt", "file")]
    assert h.w(lambda tx: volumes.version(tx, vid)) == 1


def test_files_and_directories_do_not_overwrite_each_other(h: Any) -> None:
    vid = _vol(h)
    _commit(h, vid, _put("d/f"))
    with pytest.raises(Conflict):
        _commit(h, vid, _put("d"))  # d is a directory
    with pytest.raises(Conflict):
        _commit(h, vid, _put("d/f/g"))  # d/f is a file
    with pytest.raises(Conflict):
        _commit(h, vid, {"op": "mkdir", "path": "d/f"})


def test_remove_needs_recursive_for_a_non_empty_directory(h: Any) -> None:
    vid = _vol(h)
    _commit(h, vid, _put("d/e/f"), _put("d2/x"), _put("d/e2"))
    with pytest.raises(Conflict):
        _commit(h, vid, {"op": "rm", "path": "d"})
    _commit(h, vid, {"op": "rm", "path": "d", "recursive": True})
    # d2 shares a prefix with d but is not under it
    assert _ls(h, vid, recursive=True) == [("d2", "directory"), ("d2/x", "file")]
    with pytest.raises(NotFound):
        _commit(h, vid, {"op": "rm", "path": "d"})


def test_copy_shares_content_and_copies_into_directories(h: Any) -> None:
    vid = _vol(h)
    _commit(h, vid, _put("src/a", A), _put("src/sub/b", B), {"op": "mkdir", "path": "dst"})
    _commit(h, vid, {"op": "cp", "src": "src/a", "dst": "one"})  # to a new name
    _commit(h, vid, {"op": "cp", "src": "src", "dst": "dst"})  # into a directory
    tree = h.w(lambda tx: volumes.entries(tx, vid, "", True))[1]
    digests = {e["path"]: e["digest"] for e in tree}
    assert digests["one"] == A
    assert digests["dst/src/a"] == A and digests["dst/src/sub/b"] == B
    with pytest.raises(Conflict):
        _commit(h, vid, {"op": "cp", "src": "src", "dst": "src/sub"})  # into itself
    with pytest.raises(NotFound):
        _commit(h, vid, {"op": "cp", "src": "missing", "dst": "x"})


def test_deleting_a_volume_deletes_its_files(h: Any) -> None:
    vid = _vol(h)
    _commit(h, vid, _put("a"))
    h.w(lambda tx: storage.delete(tx, "volume", "v"))
    assert h.one("SELECT COUNT(*) FROM volume_files WHERE volume_id = ?", (vid,)) == 0
    assert h.one("SELECT COUNT(*) FROM volumes WHERE volume_id = ?", (vid,)) == 0
    with pytest.raises(NotFound):
        _commit(h, vid, _put("b"))


def test_digests_in_use_protects_volume_content_from_blob_collection(h: Any) -> None:
    vid = _vol(h)
    _commit(h, vid, _put("a", A))
    assert h.w(lambda tx: volumes.digests_in_use(tx, [A, B])) == {A}


def test_concurrent_commits_to_different_files_all_land(h: Any) -> None:
    vid = _vol(h)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(5):
                _commit(h, vid, _put(f"w{n}/f{i}"))
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = [p for p, kind in _ls(h, vid, recursive=True) if kind == "file"]
    assert len(files) == 20
    assert h.w(lambda tx: volumes.version(tx, vid)) == 20


@pytest.mark.parametrize(
    ("raw", "stored"), [("/a/b/", "a/b"), ("a//b", "a/b"), ("./a", "a"), ("/", ""), ("", "")]
)
def test_paths_are_normalised(raw: str, stored: str) -> None:
    assert norm_path(raw) == stored


@pytest.mark.parametrize("bad", ["../etc", "a/../../b", "a\0b", 7, "x" * 256])
def test_paths_that_escape_or_cannot_exist_are_refused(bad: Any) -> None:
    with pytest.raises(PathError):
        norm_path(bad)


@pytest.mark.parametrize(
    "ops",
    [
        [],
        [{"op": "put", "path": "a", "digest": "xyz", "size": 1}],
        [{"op": "put", "path": "a", "digest": A, "size": -1}],
        [{"op": "put", "path": "/", "digest": A, "size": 1}],
        [{"op": "mkdir", "path": "a", "mode": 0o77777}],
        [{"op": "chmod", "path": "a"}],
        ["put"],
    ],
)
def test_bad_operations_are_refused(ops: Any) -> None:
    with pytest.raises(ValueError):
        check_ops(ops)
