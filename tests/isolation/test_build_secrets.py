"""Build secrets, end to end: a step's commands get a named secret's values for that build only; the
layer's key holds the name (a rotated value rebuilds nothing); no layer, image config or build log holds
the value."""

import hashlib
import os
import uuid

import httpx
import pytest

import vivace
from vivace import exception as exc
from vivace._version import __version__
from vivace.testing.cluster import LocalCluster
from vivace.worker import layers

from .conftest import _load, require_debootstrap, require_runtime, sdk_pointed_at

pytestmark = pytest.mark.timeout(900)

BASE_CACHE = "/var/cache/vivace/test-images"  # shared with the other image tests (debootstrap is slow)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    require_runtime("crun")
    require_debootstrap()
    home = tmp_path_factory.mktemp("build-secrets")
    name = f"build-token-{uuid.uuid4().hex[:8]}"
    os.environ["SECRET_IMAGE_NAME"] = name
    try:
        env = {"VIVACE_BASE_CACHE": BASE_CACHE}
        with (
            LocalCluster(home, runtimes=["crun"], warm_pool=0, worker_env=env) as cluster,
            sdk_pointed_at(cluster),
        ):
            module = _load("secret_image")
            module.cluster, module.name = cluster, name
            yield module
    finally:
        os.environ.pop("SECRET_IMAGE_NAME", None)


def _image(cluster, image_id):
    """The image as the API describes it, with its whole build log."""
    headers = {"authorization": f"Bearer {cluster.user_token}", "x-vivace-version": __version__}
    url = f"{cluster.url}/v1/images/{image_id}"
    return httpx.get(url, params={"cursor": 0}, headers=headers, timeout=30).json()


def test_a_build_step_sees_the_secret_and_nothing_keeps_it(built, tmp_path):
    value = f"tok-{uuid.uuid4().hex}"
    vivace.Secret.objects.create(built.name, {"BUILD_TOKEN": value})
    image_id = built.image.object_id
    with built.app.run():
        seen = built.probe.remote()
    digest = hashlib.sha256(value.encode()).hexdigest()
    assert seen == {"sha": digest, "fn_sha": digest, "env": None}  # the build saw it; the container does not
    data = _image(built.cluster, image_id)
    assert data["state"] == "ready" and built.name in str(data["steps"])  # the steps name the secret
    text = "\n".join(line["line"] for line in data["logs"])
    assert "the token is ***" in text and value not in text and value not in str(data)
    for n, layer in enumerate(data["layers"]):  # no file of any layer holds the value
        blob = built.cluster.plane.blobs.path(layer["digest"])
        assert blob is not None, layer
        layers.unpack_layer(blob, tmp_path / str(n))
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert value.encode() not in path.read_bytes(), path
    assert value not in (built.cluster.home / "worker.log").read_text(errors="replace")

    # a rotated value changes no key: the next run builds nothing
    vivace.Secret.objects.create(built.name, {"BUILD_TOKEN": "rotated-" + value}, overwrite=True)
    assert built.image.object_id == image_id
    with built.app.run():
        assert built.probe.remote()["sha"] == digest  # the layer built with the first value
    vivace.Secret.objects.delete(built.name)


def test_a_missing_build_secret_fails_before_building(built):
    absent = f"absent-{uuid.uuid4().hex[:8]}"
    image = vivace.Image.debian_slim("3.11").run_commands("true", secrets=[vivace.Secret.from_name(absent)])
    with pytest.raises(exc.NotFoundError, match=absent):
        image.build()
