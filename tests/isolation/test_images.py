"""Functions in custom images, end to end: built on a worker, cached by content, files from the image."""

import os

import pytest

from vivace.testing.cluster import LocalCluster

from .conftest import _load, replace_worker, require_debootstrap, require_runtime, sdk_pointed_at

pytestmark = pytest.mark.timeout(900)

# debootstrap is the slowest step there is: share the machine's cache of Debian trees with the build tests
BASE_CACHE = "/var/cache/vivace/test-images"


@pytest.fixture(scope="module")
def imaged(tmp_path_factory):
    require_runtime("crun")
    require_debootstrap()
    home = tmp_path_factory.mktemp("imaged")
    host_file = home / "host-only.txt"
    host_file.write_text("the host's")
    conf = home / "imaged.conf"
    conf.write_text("baked in\n")
    attached = home / "attached.txt"
    attached.write_text("attached v1")
    # the worker's registry credentials (docker login's format), written by the tests that need them
    env = {"VIVACE_BASE_CACHE": BASE_CACHE, "VIVACE_REGISTRY_AUTH": str(home / "registry-auth.json")}
    old = {k: os.environ.get(k) for k in ("IMAGED_HOST_FILE", "IMAGED_CONF", "IMAGED_ATTACHED")}
    os.environ.update(IMAGED_HOST_FILE=str(host_file), IMAGED_CONF=str(conf), IMAGED_ATTACHED=str(attached))
    try:
        with (
            LocalCluster(home, runtimes=["crun"], warm_pool=1, worker_env=env) as cluster,
            sdk_pointed_at(cluster),
        ):
            module = _load("imaged")
            module.cluster, module.attached = cluster, attached
            module.registry_auth = home / "registry-auth.json"
            yield module
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_function_runs_in_its_image(imaged):
    with imaged.app.run():
        seen = imaged.probe.remote()
    assert seen["debian"] and seen["python"].startswith("/usr/bin/python3"), seen
    assert seen["six"] == "1.16.0"  # absent on the host: it comes from the image
    assert seen["cloudpickle"] == "3.0.0"  # the user's pin wins over the runtime's own cloudpickle
    assert seen["greeting"] == "from the image" and seen["jq"] == "/usr/bin/jq"
    assert seen["conf"] == "baked in\n" and seen["attached"] == "attached v1"
    assert seen["weights"] == "tiny-model@r1 on 3.11"  # written by run_function at build time
    assert seen["host_file_visible"] is False


def test_once_an_image_started_its_next_container_is_a_warm_hand_over(imaged):
    import re
    import time

    log = imaged.cluster.home / "worker.log"
    deadline = time.monotonic() + 60
    while f"on image {imaged.image.object_id}" not in log.read_text():  # the pool makes one on its root
        assert time.monotonic() < deadline, "no warm container on the image's root"
        time.sleep(0.1)
    handed = len(re.findall("started from warm", log.read_text()))
    with imaged.app.run():
        seen = imaged.probe.remote()
    assert seen["six"] == "1.16.0" and seen["host_file_visible"] is False  # the image's root, as cold
    assert len(re.findall("started from warm", log.read_text())) == handed + 1


def test_files_attached_at_start_change_without_a_rebuild(imaged):
    image_id, builds = imaged.image.object_id, _build_log_lines(imaged.cluster)
    imaged.attached.write_text("attached v2")
    try:
        again = _load("imaged")  # the app file run again, as `vivace run` would after an edit
        again.cluster, again.attached = imaged.cluster, imaged.attached
        assert again.image.object_id == image_id  # the attached file is not part of the image
        with again.app.run():
            assert again.probe.remote()["attached"] == "attached v2"
        assert _build_log_lines(imaged.cluster) == builds  # nothing was built
    finally:
        imaged.attached.write_text("attached v1")


def test_a_second_build_reuses_every_layer(imaged):
    image = imaged.image
    image.build()
    import httpx

    from vivace._version import __version__

    env = imaged.cluster.client_env()
    headers = {
        "authorization": f"Bearer {env['VIVACE_TOKEN_ID']}:{env['VIVACE_TOKEN_SECRET']}",
        "x-vivace-version": __version__,
    }
    with httpx.Client(base_url=imaged.cluster.url, headers=headers, timeout=30) as http:
        info = http.get(f"/v1/images/{image.object_id}").json()
        assert info["state"] == "ready" and all(layer["digest"] for layer in info["layers"])
        changed = imaged.built.env({"MORE": "1"})
        changed.build()
        log = [line["line"] for line in http.get(f"/v1/images/{changed.object_id}").json()["logs"]]
    cached = [line for line in log if line.endswith(": cached")]
    built = [line for line in log if line.endswith(": building")]
    assert len(cached) == len(info["layers"]) and len(built) == 1, log  # only the new step was built


def test_another_worker_fetches_the_layers_and_builds_nothing(imaged):
    """A second worker with its own state directory runs the image from the blob store."""
    cluster = imaged.cluster
    lines_before = _build_log_lines(cluster)
    replace_worker(cluster, "worker2")
    with imaged.app.run():
        seen = imaged.probe.remote()
    assert seen["six"] == "1.16.0" and seen["conf"] == "baked in\n"
    cache = cluster.home / "worker2" / "images" / "layers"
    info = imaged.image.steps()
    from vivace.protocol import images as proto

    assert {p.name for p in cache.iterdir() if not p.name.startswith(".")} >= set(proto.layer_keys(info))
    assert _build_log_lines(cluster) == lines_before  # nothing was built again, anywhere
    assert ": building" not in (cluster.home / "worker2.log").read_text()


def _build_log_lines(cluster):
    return cluster.plane.store.write_sync(lambda tx: int(tx.scalar("SELECT COUNT(*) FROM build_logs")))
