"""Collecting a layer that containers saw through an idmapped view: the view is unmounted first, and the
layer goes whole (a real idmapped mount, as the OCI runtimes make them for user namespaces)."""

import os

import pytest

from vivace.worker import idmap
from vivace.worker.layer_cache import LayerCache
from vivace.worker.runtimes.oci import mounted_under

from .conftest import require_runtime


def test_a_collected_layer_takes_its_idmapped_view_with_it(tmp_path):
    require_runtime("crun")  # root, and a host where the runtimes make idmapped views
    images = tmp_path / "images"
    layer = images / "layers" / ("a" * 64)
    (layer / "etc").mkdir(parents=True)
    (layer / "etc/motd").write_bytes(os.urandom(64 * 1024))
    view = images / "layers.idmap-crun" / layer.name
    view.mkdir(parents=True)
    ns = idmap.userns_fd()
    try:
        try:
            idmap.mount_idmapped(layer, view, ns)
        except OSError as err:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"idmapped mounts do not work here: {err}")
    finally:
        os.close(ns)
    assert view in mounted_under(view.parent) and (view / "etc/motd").exists()
    cache = LayerCache(images, max_bytes=0)
    removed = cache.collect()
    assert [e.path for e in removed] == [layer]
    assert not layer.exists() and not view.exists() and view not in mounted_under(view.parent)
    assert not list((images / "layers").iterdir())
