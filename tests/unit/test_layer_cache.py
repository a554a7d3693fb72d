"""The worker's layer cache stays under its size: least recently used first, never what is in use."""

import os
import time

from vivace.worker.layer_cache import LayerCache


def _layer(root, name, kib, where="layers"):
    d = root / where / name
    (d / "usr/lib").mkdir(parents=True)
    (d / "usr/lib/blob").write_bytes(os.urandom(kib * 1024))
    return d


def test_least_recently_used_layers_go_first_until_the_cache_fits(tmp_path):
    old, mid, new = (_layer(tmp_path, n, 400) for n in ("old", "mid", "new"))
    pulled = _layer(tmp_path, "sha256-" + "a" * 64, 400, where="pulls")
    cache = LayerCache(tmp_path, max_bytes=1000 * 1024)  # room for two of the four
    for i, layer in enumerate((pulled, old, mid, new)):
        cache.touch([layer])
        cache._write(layer, {**cache._read(layer), "used": time.time() + i})
    assert sum(e.size for e in cache.entries()) >= 1600 * 1024
    removed = cache.collect()
    assert [e.path for e in removed] == [pulled, old]
    assert not pulled.exists() and not old.exists() and mid.is_dir() and new.is_dir()
    assert not list((tmp_path / "layers").glob(".trash-*"))
    assert cache.collect() == []  # it fits now


def test_pinned_and_in_use_layers_are_never_removed(tmp_path):
    a, b, c = (_layer(tmp_path, n, 400) for n in ("a", "b", "c"))
    cache = LayerCache(tmp_path, max_bytes=100 * 1024)
    for i, layer in enumerate((a, b, c)):
        cache._write(layer, {"used": float(i)})
    cache.pin([a])
    removed = cache.collect(in_use=[b])
    assert [e.path for e in removed] == [c] and a.is_dir() and b.is_dir()
    cache.unpin([a])
    assert [e.path for e in cache.collect(in_use=[b])] == [a]


def test_hard_links_count_once_and_sizes_are_measured_once(tmp_path):
    a = _layer(tmp_path, "a", 300)
    os.link(a / "usr/lib/blob", a / "usr/lib/again")
    cache = LayerCache(tmp_path, max_bytes=10 << 20)
    (size,) = [e.size for e in cache.entries()]
    assert 300 * 1024 <= size < 400 * 1024
    (a / "usr/lib/more").write_bytes(os.urandom(500 * 1024))  # layers never change: not measured again
    assert [e.size for e in cache.entries()] == [size]


def test_an_interrupted_removal_is_finished_at_start(tmp_path):
    a = _layer(tmp_path, "a", 10)
    a.rename(tmp_path / "layers" / ".trash-a-123456")
    LayerCache(tmp_path, max_bytes=1).sweep_trash()
    assert list((tmp_path / "layers").iterdir()) == []
