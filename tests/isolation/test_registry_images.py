"""Functions in images pulled from a real OCI registry on loopback (Debian's ``docker-registry``).

The test pushes its own image: a Debian base layer with Python (the machine's debootstrapped tree) and a
top layer with a file, a whiteout and an opaque directory, behind a manifest list for two platforms.
The worker pulls the host's platform, squashes the layers into one image layer, applies the image's
config (env, working directory) and builds a step on top; a second run asks the registry for nothing.
"""

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vivace
from vivace import exception as exc

from .conftest import _load
from .test_images import BASE_CACHE, imaged  # noqa: F401  (the cluster with a building worker)

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from registry_support.images import directory, file, layer
from registry_support.pusher import Layer, Pusher
from registry_support.server import Registry

pytestmark = pytest.mark.timeout(900)
REPO = "vivace-test/pulled"
DOCKERFILE = """\
# the base comes in as a build argument
ARG BASE
FROM ${BASE}
ARG GREETING=hello
ENV APP_HOME=/srv/app \\
    MODE=test
COPY app/ ${APP_HOME}/
WORKDIR /srv/work
RUN echo "$GREETING from RUN" > run.txt && echo "appuser:x:1500:1500::/home/appuser:/bin/sh" >> /etc/passwd \\
    && echo "appuser:x:1500:" >> /etc/group && mkdir -p /home/appuser && chown 1500:1500 /home/appuser
USER appuser
RUN id -un > /home/appuser/whoami
CMD ["python3", "main.py"]
"""


def _tree_layer(tree: Path) -> Layer:
    """A whole directory tree as one gzip'd layer."""
    plain = subprocess.run(
        ["tar", "--numeric-owner", "--sort=name", "-C", str(tree), "-cf", "-", "."],
        capture_output=True,
        check=True,
    ).stdout
    return Layer(
        gzip.compress(plain, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest(), "gzip"
    )


@pytest.fixture(scope="module")
def pulled(imaged, tmp_path_factory):  # noqa: F811
    from vivace.worker import builder

    old = os.environ.get("VIVACE_BASE_CACHE")
    os.environ["VIVACE_BASE_CACHE"] = BASE_CACHE
    try:
        tree = builder.debian_base("3.11", print)
    finally:
        if old is None:
            os.environ.pop("VIVACE_BASE_CACHE")
        else:
            os.environ["VIVACE_BASE_CACHE"] = old
    registry = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        pusher = Pusher(registry.url)
        base = _tree_layer(tree)
        top = layer(
            [
                directory("opt/"),
                directory("opt/app/"),
                file("opt/app/hello.txt", b"hello from the registry"),
                file("etc/.wh.debian_version"),
                directory("usr/share/doc/"),
                file("usr/share/doc/.wh..wh..opq"),
                file("usr/share/doc/only.txt", b"the only doc"),
            ]
        )
        config = {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "FROM_REGISTRY=yes"], "WorkingDir": "/opt/app"}
        amd64 = pusher.image(REPO, "amd64", [base, top, layer([file("platform", b"amd64")])], config=config)
        arm64 = pusher.image(
            REPO,
            "arm64",
            [base, top, layer([file("platform", b"arm64")])],
            config=config,
            architecture="arm64",
        )
        pusher.index(
            REPO,
            "latest",
            [
                (amd64, {"os": "linux", "architecture": "amd64"}),
                (arm64, {"os": "linux", "architecture": "arm64"}),
            ],
            oci=True,
        )
        os.environ["PULLED_REFERENCE"] = f"{registry.host}/{REPO}:latest"
        pusher.image("vivace-test/nopy", "1", [layer([directory("etc/"), file("etc/motd", b"no python")])])
        os.environ["PULLED_NO_PYTHON"] = f"{registry.host}/vivace-test/nopy:1"
        context = tmp_path_factory.mktemp("context")
        (context / "app").mkdir()
        (context / "app/main.py").write_text("print('main')\n")
        (context / "app/secret.key").write_text("not for the image")
        (context / ".dockerignore").write_text("**/*.key\n")
        (context / "Dockerfile").write_text(DOCKERFILE)
        os.environ["PULLED_DOCKERFILE"] = str(context / "Dockerfile")
        module = _load("pulled")
        module.registry, module.base = registry, base
        yield module
    finally:
        os.environ.pop("PULLED_REFERENCE", None)
        os.environ.pop("PULLED_DOCKERFILE", None)
        os.environ.pop("PULLED_NO_PYTHON", None)
        registry.stop()


def test_a_function_runs_in_a_pulled_image(pulled):
    if os.uname().machine != "x86_64":
        pytest.skip("the pushed index names amd64 and arm64; this test checks amd64's")
    with pulled.app.run():
        seen = pulled.probe.remote()
    assert seen == {
        "hello": "hello from the registry",
        "platform": "amd64",  # the manifest list's entry for this machine
        "built": "built on top\n",  # a build step ran over the pulled layers
        "debian_version": False,
        "doc": ["only.txt"],
        "cwd": "/opt/app",  # the image config's WorkingDir and Env
        "env": "yes",
        "python": "/usr/bin/python3",
    }
    gets = pulled.registry.blob_gets(pulled.base.digest)
    assert gets == 1
    with pulled.app.run():  # built once: a second run asks the registry for nothing
        assert pulled.probe.remote()["hello"] == "hello from the registry"
    assert pulled.registry.blob_gets(pulled.base.digest) == gets


def test_a_missing_registry_image_fails_the_build_naming_it(pulled):
    image = vivace.Image.from_registry(f"{pulled.registry.host}/{REPO}:no-such-tag")
    with pytest.raises(exc.ImageBuildError, match="no-such-tag"):
        image.build()


def test_a_bad_reference_is_refused_before_anything_runs():
    with pytest.raises(exc.InvalidError, match="invalid image reference"):
        vivace.Image.from_registry("Not A Reference")
    with pytest.raises(exc.InvalidError, match="python_version"):
        vivace.Image.from_registry("python:3.11-slim", add_python="three")


def test_a_function_runs_in_an_image_from_a_dockerfile(pulled):
    with pulled.app.run():
        seen = pulled.dockerfile_probe.remote()
    assert seen == {
        "cwd": "/srv/work",
        "mode": "test",
        "main": "print('main')\n",
        "secret_copied": False,
        "run": "hi from RUN\n",  # the build argument overrode the ARG's default
        "hello": "hello from the registry",
        "uid": 1500,  # USER: the function runs as appuser, as the RUN after it did
        "whoami": "appuser\n",
        "home": "/home/appuser",
    }


def test_an_image_without_python_fails_its_calls_saying_so(pulled):
    with pulled.app.run(), pytest.raises(exc.Error, match="has no Python at /usr/bin/python3"):
        pulled.pythonless.remote()


def _private_registry(tmp_path, user, password):
    """A registry on loopback that lets only ``user`` in (htpasswd, bcrypt)."""
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True
    )
    root = tmp_path / "private"
    root.mkdir()
    (root / "htpasswd").write_text(htpasswd.stdout)
    return Registry(root, auth={"htpasswd": {"realm": "vivace-test", "path": str(root / "htpasswd")}}).start()


def test_a_private_registry_is_pulled_with_the_workers_credentials(pulled, imaged, tmp_path):  # noqa: F811
    import base64
    import json

    from .conftest import require_runtime

    require_runtime("crun")
    registry = _private_registry(tmp_path, "alice", "s3cret-pw")
    try:
        token = "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()
        Pusher(registry.url, token).image(
            "team/app", "1", [pulled.base, layer([file("private.txt", b"ours")])]
        )
        image = vivace.Image.from_registry(f"{registry.host}/team/app:1")
        with pytest.raises(exc.ImageBuildError, match="authentication required"):
            image.build()  # the worker has no credentials for it yet
        imaged.registry_auth.write_text(
            json.dumps({"auths": {registry.host: {"auth": base64.b64encode(b"alice:s3cret-pw").decode()}}})
        )
        image.build()  # built again (a failed image is retried), now with the worker's credentials
        lines = imaged.cluster.plane.store.write_sync(
            lambda tx: [
                r[0]
                for r in tx.fetchall("SELECT line FROM build_logs WHERE image_id = ?", (image.object_id,))
            ]
        )
        assert any("with the worker's credentials" in line for line in lines), lines
        assert not any("s3cret-pw" in line for line in lines)
    finally:
        imaged.registry_auth.unlink(missing_ok=True)
        registry.stop()


def test_a_private_registry_is_pulled_with_the_credentials_of_a_named_secret(pulled, imaged, tmp_path):  # noqa: F811
    import base64
    import uuid

    from .conftest import require_runtime

    require_runtime("crun")
    registry = _private_registry(tmp_path, "bob", "s3cret-secret-pw")
    name = f"registry-{uuid.uuid4().hex[:8]}"
    try:
        token = "Basic " + base64.b64encode(b"bob:s3cret-secret-pw").decode()
        Pusher(registry.url, token).image(
            "team/app", "2", [pulled.base, layer([file("private.txt", b"ours")])]
        )
        image = vivace.Image.from_registry(
            f"{registry.host}/team/app:2", secret=vivace.Secret.from_name(name)
        )
        with pytest.raises(exc.NotFoundError, match=name):
            image.build()  # no such secret: said before any build
        vivace.Secret.objects.create(name, {"REGISTRY_USERNAME": "bob"})
        with pytest.raises(exc.NotFoundError, match="REGISTRY_PASSWORD"):
            image.build()
        vivace.Secret.objects.create(
            name, {"REGISTRY_USERNAME": "bob", "REGISTRY_PASSWORD": "s3cret-secret-pw"}, overwrite=True
        )
        image.build()  # the worker itself has no credentials for this registry
        lines = imaged.cluster.plane.store.write_sync(
            lambda tx: [
                r[0]
                for r in tx.fetchall("SELECT line FROM build_logs WHERE image_id = ?", (image.object_id,))
            ]
        )
        assert any("with the credentials of its secret" in line for line in lines), lines
        assert not any("s3cret-secret-pw" in line for line in lines)
    finally:
        vivace.Secret.objects.delete(name, allow_missing=True)
        registry.stop()
