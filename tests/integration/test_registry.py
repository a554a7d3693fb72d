"""Pulling images (vivace.worker.registry) from a real registry on loopback.

Each registry is Debian's ``docker-registry`` (the CNCF distribution registry) started by a fixture
with its own config and storage; the tests push their own images through the distribution API
(tests/integration/registry_support) and check what ``pull`` unpacked through a real overlay mount.
Under CI=true a missing tool fails the run (as root the fixtures install it with apt-get).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_support.blob_server import BlobServer
from registry_support.images import directory, file, layer, merged_view, symlink
from registry_support.pusher import Pusher
from registry_support.server import Registry
from registry_support.token_service import SERVICE, TokenService
from registry_support.tools import require_root, require_tool

from vivace.worker.registry import (
    DOCKER_HUB,
    ImageConfig,
    InvalidReferenceError,
    Reference,
    RegistryError,
    parse_reference,
    pull,
    pull_async,
)

pytestmark = pytest.mark.timeout(90)

BASE = [
    directory("etc/"),
    file("etc/os-release", b"vivace-test\n"),
    file("etc/old.conf", b"old"),
    directory("app/"),
    file("app/a.txt", b"a"),
    file("app/b.txt", b"b"),
    directory("usr/"),
    directory("usr/bin/"),
    file("usr/bin/tool", b"#!/bin/sh\n", 0o755),
    symlink("bin", "usr/bin"),
]
TOP = [  # deletes a file of BASE and replaces the content of app/
    directory("etc/"),
    file("etc/.wh.old.conf"),
    directory("app/"),
    file("app/.wh..wh..opq"),
    file("app/c.txt", b"c"),
]
THIRD = [file("hello.txt", b"hello from layer 3")]
STACKED = {
    "app/": "",
    "app/c.txt": "c",
    "bin": "-> usr/bin",
    "etc/": "",
    "etc/os-release": "vivace-test\n",
    "hello.txt": "hello from layer 3",
    "usr/": "",
    "usr/bin/": "",
    "usr/bin/tool": "#!/bin/sh\n",
}
SELF_SIGNED = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"]
CONFIG = {
    "Env": ["PATH=/usr/bin:/bin", "GREETING=hi"],
    "Entrypoint": ["/usr/bin/tool"],
    "Cmd": ["--serve"],
    "WorkingDir": "/app",
    "User": "1000:1000",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def pusher(registry: Registry) -> Pusher:
    return Pusher(registry.url)


def key(digest: str) -> str:
    return digest.replace(":", "-")


# ------------------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python", Reference(DOCKER_HUB, "library/python", "latest")),
        ("python:3.11-slim", Reference(DOCKER_HUB, "library/python", "3.11-slim")),
        ("docker.io/library/python:3.11", Reference(DOCKER_HUB, "library/python", "3.11")),
        ("pytorch/pytorch:2.3.0-cuda12.1", Reference(DOCKER_HUB, "pytorch/pytorch", "2.3.0-cuda12.1")),
        ("ghcr.io/org/team/app:v1", Reference("ghcr.io", "org/team/app", "v1")),
        ("localhost/app", Reference("localhost", "app", "latest")),
        ("127.0.0.1:5000/a/b_c.d-e:t", Reference("127.0.0.1:5000", "a/b_c.d-e", "t")),
        ("app@sha256:" + "a" * 64, Reference(DOCKER_HUB, "library/app", None, "sha256:" + "a" * 64)),
        ("r.io:443/app:v2@sha256:" + "b" * 64, Reference("r.io:443", "app", "v2", "sha256:" + "b" * 64)),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "Python:3", "python:", "python:-x", "app@sha256:abc", "app@md5:" + "a" * 32, "a//b", "ghcr.io/"],
)
def test_parse_reference_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid image reference"):
        parse_reference(text)


# ------------------------------------------------------------------------------------------ pulls


def test_pull_stacks_layers_with_whiteouts_and_opaque_dirs(
    registry: Registry, pusher: Pusher, tmp_path: Path
) -> None:
    require_root("unpacking whiteouts and opaque directories")
    layers = [layer(BASE, "gzip"), layer(TOP, "zstd"), layer(THIRD, "plain")]
    manifest = pusher.image("vivace/app", "v1", layers, oci=True, config=CONFIG)
    cache = tmp_path / "layers"
    pulled = pull(f"{registry.host}/vivace/app:v1", cache)
    digests = tuple(item.digest for item in layers)
    assert pulled.manifest_digest == manifest["digest"]
    assert pulled.layers == digests
    assert pulled.layer_dirs == tuple(cache / key(d) for d in digests)
    assert sorted(pulled.downloaded) == sorted(digests)
    assert pulled.config == ImageConfig(
        env=("PATH=/usr/bin:/bin", "GREETING=hi"),
        entrypoint=("/usr/bin/tool",),
        cmd=("--serve",),
        working_dir="/app",
        user="1000:1000",
    )
    assert merged_view(list(pulled.layer_dirs)) == STACKED
    assert sorted(p.name for p in cache.iterdir()) == sorted(key(d) for d in digests), (
        "no temporary files left"
    )

    # a second pull finds every layer in the cache and downloads none of them
    deadline = time.monotonic() + 5
    while any(registry.blob_gets(d) == 0 for d in digests) and time.monotonic() < deadline:
        time.sleep(0.05)  # the registry writes its access log after answering
    before = {d: registry.blob_gets(d) for d in digests}
    assert all(n == 1 for n in before.values()), before
    again = pull(f"{registry.host}/vivace/app:v1", cache)
    assert again.downloaded == ()
    assert again.layer_dirs == pulled.layer_dirs
    time.sleep(0.3)
    assert {d: registry.blob_gets(d) for d in digests} == before


def test_docker_schema2_by_tag_and_by_digest(registry: Registry, pusher: Pusher, tmp_path: Path) -> None:
    require_root("unpacking whiteouts and opaque directories")
    layers = [layer(BASE), layer(TOP)]
    manifest = pusher.image("vivace/docker", "v1", layers, oci=False, config={"Cmd": ["sh"]})
    by_tag = pull(f"{registry.host}/vivace/docker:v1", tmp_path / "a")
    digest = manifest["digest"]
    by_digest = pull(f"{registry.host}/vivace/docker@{digest}", tmp_path / "b")
    both = pull(f"{registry.host}/vivace/docker:ignored@{digest}", tmp_path / "b")
    assert by_tag.manifest_digest == by_digest.manifest_digest == both.manifest_digest == digest
    assert by_digest.layers == by_tag.layers == tuple(item.digest for item in layers)
    assert by_digest.config == ImageConfig(cmd=("sh",))
    view = merged_view(list(by_digest.layer_dirs))
    assert "etc/old.conf" not in view and "app/a.txt" not in view and view["app/c.txt"] == "c"


@pytest.mark.parametrize("oci", [False, True], ids=["docker-manifest-list", "oci-index"])
def test_manifest_list_chooses_the_platform(
    registry: Registry, pusher: Pusher, tmp_path: Path, oci: bool
) -> None:
    repo = f"vivace/multi-{'oci' if oci else 'docker'}"
    amd = pusher.image(repo, "amd64", [layer([file("arch", b"amd64")])], oci=oci)
    arm = pusher.image(repo, "arm64", [layer([file("arch", b"arm64")])], oci=oci, architecture="arm64")
    attestation = pusher.image(repo, "att", [layer([file("sbom", b"{}")])], oci=oci)
    pusher.index(
        repo,
        "multi",
        [
            (attestation, {"os": "unknown", "architecture": "unknown"}),
            (amd, {"os": "linux", "architecture": "amd64"}),
            (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ],
        oci=oci,
    )
    ref = f"{registry.host}/{repo}:multi"
    for platform, arch, manifest in [
        ("linux/amd64", b"amd64", amd),
        ("linux/x86_64", b"amd64", amd),
        ("linux/arm64", b"arm64", arm),
        ("linux/arm64/v8", b"arm64", arm),
    ]:
        pulled = pull(ref, tmp_path / "layers", platform=platform)
        assert pulled.manifest_digest == manifest["digest"], platform
        assert (pulled.layer_dirs[0] / "arch").read_bytes() == arch, platform
    with pytest.raises(
        RegistryError, match=r"has no image for linux/s390x; available: linux/amd64, linux/arm64/v8$"
    ):
        pull(ref, tmp_path / "layers", platform="linux/s390x")
    with pytest.raises(InvalidReferenceError, match="invalid platform"):
        pull(ref, tmp_path / "layers", platform="amd64")


def test_missing_tags_and_repositories_are_clear_errors(
    registry: Registry, pusher: Pusher, tmp_path: Path
) -> None:
    pusher.image("vivace/tags", "v1", [layer(THIRD)])
    with pytest.raises(RegistryError) as tag:
        pull(f"{registry.host}/vivace/tags:nope", tmp_path)
    assert (tag.value.status, tag.value.code) == (404, "MANIFEST_UNKNOWN")
    assert f"no tag 'nope' in repository vivace/tags on {registry.host}" in str(tag.value)
    assert "HTTP 404: MANIFEST_UNKNOWN" in str(tag.value)

    absent = "sha256:" + "0" * 64
    with pytest.raises(RegistryError, match=f"no manifest {absent} in repository vivace/tags") as digest:
        pull(f"{registry.host}/vivace/tags@{absent}", tmp_path)
    assert digest.value.status == 404

    with pytest.raises(RegistryError) as repo:
        pull(f"{registry.host}/vivace/never-pushed:v1", tmp_path)
    assert repo.value.status == 404
    assert "vivace/never-pushed" in str(repo.value)
    assert os.listdir(tmp_path) == []


def test_a_corrupted_blob_is_rejected_and_nothing_is_cached(
    registry: Registry, pusher: Pusher, tmp_path: Path
) -> None:
    good, bad = layer(BASE), layer([file("payload", os.urandom(300_000))])
    pusher.image("vivace/corrupt", "v1", [good, bad])
    stored = registry.blob_path(bad.digest)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the digest can tell
    stored.write_bytes(bytes(data))
    cache = tmp_path / "layers"
    with pytest.raises(RegistryError, match=f"blob {bad.digest} of .* failed verification"):
        pull(f"{registry.host}/vivace/corrupt:v1", cache)
    assert not (cache / key(bad.digest)).exists()
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_pull_async(registry: Registry, pusher: Pusher, tmp_path: Path) -> None:
    pusher.image("vivace/async", "v1", [layer(THIRD)])
    pulled = asyncio.run(pull_async(f"{registry.host}/vivace/async:v1", tmp_path))
    assert (pulled.layer_dirs[0] / "hello.txt").read_text() == "hello from layer 3"


# ------------------------------------------------------------- basic auth, with blobs redirected


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, BlobServer]]:
    """A registry asking for Basic credentials (htpasswd, bcrypt) that redirects blob downloads to
    another server, as registries backed by S3 or a CDN do."""
    htpasswd = require_tool("htpasswd", "apache2-utils")
    root = tmp_path_factory.mktemp("basic-registry")
    entry = subprocess.run([htpasswd, "-Bbn", "alice", "s3cret"], capture_output=True, text=True, check=True)
    (root / "htpasswd").write_text(entry.stdout)
    (root / "storage").mkdir()
    blobs = BlobServer(root / "storage").start()
    reg = Registry(
        root,
        auth={"htpasswd": {"realm": "vivace-test", "path": str(root / "htpasswd")}},
        middleware={"storage": [{"name": "redirect", "options": {"baseurl": blobs.url}}]},
    )
    try:
        yield reg.start(), blobs
    finally:
        reg.stop()
        blobs.stop()


def basic_header(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth(basic: tuple[Registry, BlobServer], tmp_path: Path) -> None:
    require_root("unpacking whiteouts and opaque directories")
    reg, _ = basic
    Pusher(reg.url, basic_header("alice", "s3cret")).image("vivace/private", "v1", [layer(BASE), layer(TOP)])
    ref = f"{reg.host}/vivace/private:v1"
    with pytest.raises(RegistryError, match="authentication required") as anonymous:
        pull(ref, tmp_path / "a")
    assert anonymous.value.status == 401
    with pytest.raises(RegistryError, match="credentials rejected") as wrong:
        pull(ref, tmp_path / "a", auth=("alice", "wrong"))
    assert wrong.value.status == 401
    pulled = pull(ref, tmp_path / "a", auth=("alice", "s3cret"))
    assert merged_view(list(pulled.layer_dirs))["app/c.txt"] == "c"


def test_redirected_blobs_are_fetched_without_the_registry_credentials(
    basic: tuple[Registry, BlobServer], tmp_path: Path
) -> None:
    reg, blobs = basic
    layers = [layer(THIRD, "zstd")]
    Pusher(reg.url, basic_header("alice", "s3cret")).image("vivace/redirected", "v1", layers)
    blobs.requests.clear()
    pulled = pull(f"{reg.host}/vivace/redirected:v1", tmp_path, auth=("alice", "s3cret"))
    assert (pulled.layer_dirs[0] / "hello.txt").read_text() == "hello from layer 3"
    fetched = [path for path, _ in blobs.requests]
    assert any(layers[0].digest.split(":")[1] in path for path in fetched), fetched
    assert all(authorization is None for _, authorization in blobs.requests)


# ----------------------------------------------------------------------------- bearer token auth


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenService]]:
    root = tmp_path_factory.mktemp("token-registry")
    service = TokenService(root / "token", users={"bob": "hunter2"}, public={"vivace/public"}).start()
    reg = Registry(root, auth=service.registry_auth())
    try:
        yield reg.start(), service
    finally:
        reg.stop()
        service.stop()


def test_bearer_token_flow(token: tuple[Registry, TokenService], tmp_path: Path) -> None:
    require_root("unpacking whiteouts and opaque directories")
    reg, service = token
    grant = [
        {"type": "repository", "name": name, "actions": ["pull", "push"]}
        for name in ("vivace/public", "vivace/secret")
    ]
    push = Pusher(reg.url, "Bearer " + service.issue("bob", grant))
    push.image("vivace/public", "v1", [layer(BASE), layer(TOP)])
    push.image("vivace/secret", "v1", [layer(THIRD)])

    service.requests.clear()
    public = pull(f"{reg.host}/vivace/public:v1", tmp_path / "layers")
    assert merged_view(list(public.layer_dirs)) == {k: v for k, v in STACKED.items() if k != "hello.txt"}
    assert service.requests[0]["user"] == ""
    assert service.requests[0]["query"] == {"scope": ["repository:vivace/public:pull"], "service": [SERVICE]}

    with pytest.raises(RegistryError, match=f"access to vivace/secret on {reg.host} denied") as denied:
        pull(f"{reg.host}/vivace/secret:v1", tmp_path / "layers")
    assert denied.value.status == 401

    with pytest.raises(
        RegistryError, match=r"credentials rejected .*incorrect username or password"
    ) as wrong:
        pull(f"{reg.host}/vivace/secret:v1", tmp_path / "layers", auth=("bob", "nope"))
    assert wrong.value.status == 401

    service.requests.clear()
    secret = pull(f"{reg.host}/vivace/secret:v1", tmp_path / "layers", auth=("bob", "hunter2"))
    assert (secret.layer_dirs[0] / "hello.txt").read_text() == "hello from layer 3"
    assert {r["user"] for r in service.requests} == {"bob"}


# -------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path]]:
    """A registry serving HTTPS with its own CA on 127.0.0.2 (loopback, but not a name pull treats as
    plain-HTTP), so the certificate check and SSL_CERT_FILE are exercised."""
    openssl = require_tool("openssl", "openssl")
    root = tmp_path_factory.mktemp("tls-registry")
    for name in ("tls", "other"):
        key_file, cert = root / f"{name}.key", root / f"{name}.crt"
        subprocess.run(
            [
                openssl,
                *SELF_SIGNED,
                f"/CN=vivace-{name}",
                "-addext",
                "subjectAltName=IP:127.0.0.2",
                "-keyout",
                str(key_file),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    reg = Registry(
        root, host="127.0.0.2", tls={"certificate": str(root / "tls.crt"), "key": str(root / "tls.key")}
    )
    try:
        yield reg.start(), root
    finally:
        reg.stop()


def test_https_registry_verified_with_ssl_cert_file(
    tls: tuple[Registry, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, certs = tls
    Pusher(reg.url, context=reg.ssl).image("vivace/tls", "v1", [layer(THIRD)])
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "other.crt"))  # a bundle without the registry's CA
    with pytest.raises(RegistryError, match=r"TLS certificate of 127\.0\.0\.2:\d+ is not trusted"):
        pull(f"{reg.host}/vivace/tls:v1", tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "tls.crt"))
    pulled = pull(f"{reg.host}/vivace/tls:v1", tmp_path)
    assert (pulled.layer_dirs[0] / "hello.txt").read_text() == "hello from layer 3"
