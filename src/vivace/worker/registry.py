"""Pulling images from OCI registries (distribution API v2) into the worker's layer cache.

:func:`pull` resolves a reference (``python:3.11-slim``, ``ghcr.io/org/app@sha256:...``) to one image
manifest, choosing the platform from a manifest list or OCI index, then downloads each layer that is
not yet in the cache, checks its digest, and unpacks it with :func:`~vivace.worker.layers.unpack_layer_atomic`
under the key ``sha256-<hex>``. Layers stream to a temporary file: none is held in memory.

Authentication follows the registry's ``WWW-Authenticate`` challenge to ``GET /v2/``: a Bearer token
from the realm it names (anonymous, or with the given credentials), or plain Basic. Tokens are
fetched again when they expire mid-pull. Blob redirects (CDNs, S3) are followed without sending the
registry's credentials to the other host. Plain HTTP is used for ``insecure=True`` and for registries
on ``localhost``/``127.0.0.1``/``[::1]``; HTTPS verifies with ``SSL_CERT_FILE`` when it is set.

Blocking, standard library only; async callers use :func:`pull_async` (a thread).

Errors: :class:`RegistryError` (an :class:`~vivace.exception.ImageBuildError`) with the HTTP status
and the registry's error code; :class:`InvalidReferenceError` for a malformed reference.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from vivace._version import __version__
from vivace.exception import ImageBuildError
from vivace.worker.layers import unpack_layer_atomic

__all__ = [
    "DOCKER_HUB",
    "ImageConfig",
    "InvalidReferenceError",
    "PulledImage",
    "Reference",
    "RegistryError",
    "credentials_file",
    "credentials_for",
    "host_platform",
    "parse_reference",
    "pull",
    "pull_async",
]

DOCKER_HUB = "registry-1.docker.io"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_CONFIG_TYPES = ("application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json")
_LAYER_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.diff.tar")
_HUB_ALIASES = ("docker.io", "index.docker.io", DOCKER_HUB)
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_TAG = re.compile(r"\w[\w.-]{0,127}")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')
_MAX_DOCUMENT = 8 << 20  # manifests and configs are small; a bigger one is not what it claims to be
_CHUNK = 1 << 20
_TIMEOUT = 60.0
_PARALLEL = 4
_ATTEMPTS = 3

T = TypeVar("T")


class RegistryError(ImageBuildError):
    """A registry refused or failed a request, or sent something that does not verify."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class InvalidReferenceError(RegistryError):
    """An image reference or platform string is malformed."""


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def target(self) -> str:
        """What the manifest is fetched by: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.registry}/{self.repository}{tag}{digest}"


@dataclass(frozen=True)
class ImageConfig:
    """What of an image's config a container needs."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> ImageConfig:
        c = doc.get("config") or {}
        entrypoint, cmd = c.get("Entrypoint"), c.get("Cmd")
        return cls(
            env=tuple(c.get("Env") or ()),
            entrypoint=tuple(entrypoint) if entrypoint is not None else None,
            cmd=tuple(cmd) if cmd is not None else None,
            working_dir=c.get("WorkingDir") or "",
            user=c.get("User") or "",
        )


@dataclass(frozen=True)
class PulledImage:
    """A pulled image: its layers (base first), their unpacked directories, and its config."""

    reference: Reference
    manifest_digest: str
    layers: tuple[str, ...]
    layer_dirs: tuple[Path, ...]
    config: ImageConfig
    downloaded: tuple[str, ...]  # the layers this pull fetched (the others were cached)


def parse_reference(ref: str) -> Reference:
    """Parse ``[registry/]repository[:tag][@digest]``; Docker Hub is the default registry."""

    def bad(why: str) -> InvalidReferenceError:
        return InvalidReferenceError(
            f"invalid image reference {ref!r}: {why} "
            "(expected [registry/]repository[:tag][@sha256:digest], e.g. python:3.11-slim)"
        )

    name, _, digest = ref.strip().partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise bad(f"{digest!r} is not a sha256 or sha512 digest")
    tag = None
    if name.rfind(":") > name.rfind("/"):
        name, _, tag = name.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise bad(f"{tag!r} is not a valid tag")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if not path:
        raise bad("no repository name")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise bad(f"{component!r} is not a valid repository name component (lowercase, digits, ._-)")
    return Reference(registry, path, tag if tag or digest else "latest", digest or None)


def pull(
    reference: str,
    layers_dir: Path,
    *,
    auth: tuple[str, str] | None = None,
    platform: str = "linux/amd64",
    insecure: bool = False,
) -> PulledImage:
    """Pull ``reference`` into ``layers_dir``, downloading only the layers not cached there.

    Args:
        reference: an image reference, e.g. ``python:3.11-slim`` or ``127.0.0.1:5000/app@sha256:...``.
        layers_dir: the worker's layer cache; each layer is unpacked at ``layers_dir/sha256-<hex>``.
        auth: ``(username, password)`` for the registry (or its token service).
        platform: ``os/arch[/variant]`` to choose from a manifest list.
        insecure: use plain HTTP (always used for loopback registries).

    Raises:
        RegistryError: the registry refused, the image has no such platform, or a blob did not verify.
        InvalidReferenceError: ``reference`` or ``platform`` is malformed.
        LayerError: a layer is not a valid or safe tar.
    """
    ref = parse_reference(reference)
    want = _parse_platform(platform)
    client = _Client(ref, auth, insecure)
    client.retrying(client.ping)
    manifest, manifest_digest = _resolve(client, ref, want)
    config_desc = _descriptor(manifest.get("config"), "config")
    if config_desc["mediaType"] not in _CONFIG_TYPES:
        raise RegistryError(f"{ref} is not a container image (config type {config_desc['mediaType']})")
    config = json.loads(client.retrying(lambda: client.document(config_desc)))
    layers = [_descriptor(d, "layer") for d in manifest.get("layers") or []]
    for d in layers:
        if not d["mediaType"].startswith(_LAYER_PREFIXES) or ".foreign." in d["mediaType"]:
            raise RegistryError(f"{ref}: unsupported layer type {d['mediaType']}")
    layers_dir.mkdir(parents=True, exist_ok=True)
    unique = {d["digest"]: d for d in layers}
    with ThreadPoolExecutor(max_workers=max(1, min(_PARALLEL, len(unique)))) as pool:
        futures = {digest: pool.submit(_layer, client, d, layers_dir) for digest, d in unique.items()}
        try:
            fetched = {digest: future.result() for digest, future in futures.items()}
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise
    return PulledImage(
        reference=ref,
        manifest_digest=manifest_digest,
        layers=tuple(d["digest"] for d in layers),
        layer_dirs=tuple(fetched[d["digest"]][0] for d in layers),
        config=ImageConfig.from_document(config),
        downloaded=tuple(digest for digest, (_, new) in fetched.items() if new),
    )


async def pull_async(
    reference: str,
    layers_dir: Path,
    *,
    auth: tuple[str, str] | None = None,
    platform: str = "linux/amd64",
    insecure: bool = False,
) -> PulledImage:
    """:func:`pull` in a thread, for the worker's event loop."""
    return await asyncio.to_thread(
        pull, reference, layers_dir, auth=auth, platform=platform, insecure=insecure
    )


def credentials_file(env: Mapping[str, str] | None = None) -> Path:
    """Where the worker's registry credentials are: ``$VIVACE_REGISTRY_AUTH``, else Docker's own
    ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (what ``docker login`` writes)."""
    env = os.environ if env is None else env
    if env.get("VIVACE_REGISTRY_AUTH"):
        return Path(env["VIVACE_REGISTRY_AUTH"])
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


def credentials_for(registry: str, path: Path) -> tuple[str, str] | None:
    """``(user, password)`` for ``registry`` from a Docker-style config file (``auths`` entries with
    ``auth`` = base64 of ``user:password``, or ``username`` and ``password``), or None.

    Raises RegistryError when the file exists but cannot be read as one (never showing its content)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise RegistryError(f"registry credentials in {path} cannot be read: {type(err).__name__}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        host = urllib.parse.urlsplit(key if "://" in key else f"//{key}").netloc
        if (DOCKER_HUB if host in _HUB_ALIASES else host) != registry or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RegistryError(f"the credentials for {registry} in {path} are malformed") from None
            if sep:
                return user, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
        if not entry:  # `docker login` with a credential helper leaves an empty entry
            raise RegistryError(
                f"the credentials for {registry} are kept by a credential helper (credsStore in {path}), "
                "which the worker does not run: write them to a file named by VIVACE_REGISTRY_AUTH"
            )
        raise RegistryError(f"the credentials for {registry} in {path} are malformed")
    return None


def host_platform() -> str:
    """This machine's platform as registries name it (``linux/amd64``, ``linux/arm64/v8``)."""
    machine = os.uname().machine
    return {"x86_64": "linux/amd64", "aarch64": "linux/arm64/v8", "arm64": "linux/arm64/v8"}.get(
        machine, f"linux/{machine}"
    )


def _parse_platform(platform: str) -> tuple[str, str, str | None]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidReferenceError(
            f"invalid platform {platform!r} (expected os/arch[/variant], e.g. linux/amd64)"
        )
    return parts[0], _ARCH.get(parts[1], parts[1]), parts[2] if len(parts) == 3 else None


_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _platform_name(p: dict[str, Any]) -> str:
    return "/".join(x for x in (p.get("os", "?"), p.get("architecture", "?"), p.get("variant")) if x)


def _matches(p: dict[str, Any], want: tuple[str, str, str | None]) -> bool:
    os_, arch, variant = want
    if p.get("os") != os_ or _ARCH.get(p.get("architecture", ""), p.get("architecture")) != arch:
        return False
    if variant is None:
        return True
    default = "v8" if arch == "arm64" else None
    return (p.get("variant") or default) == variant


def _resolve(
    client: _Client, ref: Reference, want: tuple[str, str, str | None]
) -> tuple[dict[str, Any], str]:
    """The image manifest for ``ref`` and its digest, through a manifest list when there is one."""
    missing = f"no tag {ref.tag!r} in repository {ref.repository} on {ref.registry}"
    if ref.digest:
        missing = f"no manifest {ref.digest} in repository {ref.repository} on {ref.registry}"
    doc, media_type, digest = client.retrying(lambda: client.manifest(ref.target, missing))
    if media_type in (DOCKER_LIST, OCI_INDEX):
        entries = [m for m in doc.get("manifests") or [] if isinstance(m, dict)]
        chosen = next((m for m in entries if _matches(m.get("platform") or {}, want)), None)
        if chosen is None:
            available = sorted(
                {_platform_name(m.get("platform") or {}) for m in entries} - {"unknown/unknown"}
            )
            raise RegistryError(
                f"{ref} has no image for {'/'.join(x for x in want if x)}; "
                f"available: {', '.join(available) or 'none'}"
            )
        child = _descriptor(chosen, "manifest")["digest"]
        gone = f"{ref}: the manifest list names {child}, which is missing"
        doc, media_type, digest = client.retrying(lambda: client.manifest(child, gone))
    if media_type not in (DOCKER_MANIFEST, OCI_MANIFEST):
        raise RegistryError(f"{ref}: unsupported manifest type {media_type or 'unknown'}")
    return doc, digest


def _descriptor(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str) or not _DIGEST.fullmatch(d["digest"]):
        raise RegistryError(f"malformed {what} descriptor in manifest: {d!r}")
    if not isinstance(d.get("size", 0), int):
        raise RegistryError(f"malformed {what} descriptor in manifest: {d!r}")
    return {"mediaType": str(d.get("mediaType", "")), "digest": d["digest"], "size": d.get("size")}


def _layer(client: _Client, desc: dict[str, Any], layers_dir: Path) -> tuple[Path, bool]:
    """The unpacked directory of one layer, and whether it had to be downloaded."""
    key = desc["digest"].replace(":", "-")
    if (layers_dir / key).is_dir():
        return layers_dir / key, False
    with tempfile.TemporaryFile(dir=layers_dir, prefix=".download-") as f:
        client.retrying(lambda: client.blob(desc, f))
        f.seek(0)
        return unpack_layer_atomic(f, layers_dir, key), True


def _backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
    return min(0.5 * 2.0**attempt, 8.0)


def _transient(e: BaseException) -> bool:
    if isinstance(e, RegistryError):
        return (e.status or 0) >= 500 or e.status == 429
    return isinstance(e, (OSError, http.client.HTTPException))


class _Client:
    """HTTP to one repository of one registry, with its authentication state."""

    def __init__(self, ref: Reference, auth: tuple[str, str] | None, insecure: bool) -> None:
        host = urllib.parse.urlsplit(f"//{ref.registry}").hostname or ""
        self.ref = ref
        self.base = f"{'http' if insecure or host in _LOOPBACK else 'https'}://{ref.registry}"
        self.credentials = auth
        self.authorization: str | None = None
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def retrying(self, fn: Callable[[], T]) -> T:
        """``fn()``, again after a dropped connection or a 5xx/429, up to ``_ATTEMPTS`` times."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return fn()
            except (OSError, http.client.HTTPException, RegistryError) as e:
                if not _transient(e):
                    raise
                if attempt == _ATTEMPTS:
                    if isinstance(e, RegistryError):
                        raise
                    raise RegistryError(f"cannot reach {self.ref.registry}: {e}") from e
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    def ping(self) -> None:
        """``GET /v2/``: is this a registry, and how does it want us to authenticate?"""
        with self._follow(self.base + "/v2/", {}) as resp:
            resp.read(_MAX_DOCUMENT)
            if resp.status == 401:
                self._authenticate(resp.getheader("WWW-Authenticate") or "", stale=None)
            elif resp.status == 404:
                raise RegistryError(f"{self.ref.registry} is not an OCI registry (GET /v2/: 404)", status=404)
            elif resp.status >= 400:
                code, detail = _detail(resp)
                raise RegistryError(
                    f"{self.ref.registry} failed GET /v2/ ({detail})", status=resp.status, code=code
                )

    def manifest(self, target: str, missing: str) -> tuple[dict[str, Any], str, str]:
        """The manifest document ``target`` (a tag or digest), its media type and its digest."""
        accept = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
        url = f"{self.base}/v2/{self.ref.repository}/manifests/{target}"
        with self.open(url, missing, accept=accept) as resp:
            body = _read_limited(resp, target)
            content_type = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if _DIGEST.fullmatch(target):
            _verify(target, body, f"manifest {target}")
            digest = target
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise RegistryError(f"manifest {target} of {self.ref} is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise RegistryError(f"manifest {target} of {self.ref} is not a JSON object")
        if doc.get("schemaVersion") == 1:
            raise RegistryError(f"{self.ref} has a schema 1 manifest (deprecated by Docker); push it again")
        return doc, str(doc.get("mediaType") or content_type), digest

    def document(self, desc: dict[str, Any]) -> bytes:
        """A small blob (the image config), verified."""
        url = f"{self.base}/v2/{self.ref.repository}/blobs/{desc['digest']}"
        with self.open(url, f"blob {desc['digest']} is missing from {self.ref}") as resp:
            body = _read_limited(resp, desc["digest"])
        _verify(desc["digest"], body, f"blob {desc['digest']}")
        return body

    def blob(self, desc: dict[str, Any], out: BinaryIO) -> None:
        """Stream a blob into ``out`` (rewound and truncated first), checking its size and digest."""
        digest, size = desc["digest"], desc["size"]
        algorithm, _, expected = digest.partition(":")
        h = hashlib.new(algorithm)
        out.seek(0)
        out.truncate()
        n = 0
        url = f"{self.base}/v2/{self.ref.repository}/blobs/{digest}"
        with self.open(url, f"blob {digest} is missing from {self.ref}") as resp:
            while chunk := resp.read(_CHUNK):
                n += len(chunk)
                if size is not None and n > size:
                    raise RegistryError(
                        f"blob {digest} of {self.ref} is larger than its manifest says ({size} bytes)"
                    )
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != expected or (size is not None and n != size):
            raise RegistryError(
                f"blob {digest} of {self.ref} failed verification: got {n} bytes with digest "
                f"{algorithm}:{h.hexdigest()}"
            )

    @contextlib.contextmanager
    def open(
        self, url: str, missing: str, *, accept: str | None = None
    ) -> Iterator[http.client.HTTPResponse]:
        """GET ``url`` and yield the 200 response; authenticates again once on 401."""
        for attempt in (1, 2):
            headers = {"Accept": accept} if accept else {}
            sent = self.authorization
            if sent:
                headers["Authorization"] = sent
            with self._follow(url, headers) as resp:
                if resp.status == 401 and attempt == 1:
                    resp.read(_MAX_DOCUMENT)
                    self._authenticate(resp.getheader("WWW-Authenticate") or "", stale=sent)
                    continue
                if resp.status != 200:
                    raise self._error(resp, missing)
                yield resp
                return

    @contextlib.contextmanager
    def _follow(self, url: str, headers: dict[str, str]) -> Iterator[http.client.HTTPResponse]:
        """GET ``url``, following redirects; credentials never go to another host."""
        headers = {"User-Agent": f"vivace/{__version__}", **headers}
        for _ in range(6):
            parts = urllib.parse.urlsplit(url)
            conn = self._connection(parts)
            try:
                target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
                try:
                    conn.request("GET", target, headers=headers)
                except ssl.SSLCertVerificationError as e:
                    raise RegistryError(
                        f"the TLS certificate of {parts.netloc} is not trusted: {e.verify_message} "
                        "(point SSL_CERT_FILE at a bundle that holds its CA)"
                    ) from e
                resp = conn.getresponse()
                location = resp.getheader("Location")
                if resp.status in (301, 302, 303, 307, 308) and location:
                    resp.read(_MAX_DOCUMENT)
                    url = urllib.parse.urljoin(url, location)
                    if urllib.parse.urlsplit(url).netloc != parts.netloc:
                        headers = {k: v for k, v in headers.items() if k != "Authorization"}
                    continue
                yield resp
                return
            finally:
                conn.close()
        raise RegistryError(f"too many redirects fetching {url}")

    def _connection(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=_TIMEOUT)
        if parts.scheme != "https":
            raise RegistryError(f"unsupported URL scheme in {urllib.parse.urlunsplit(parts)}")
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
        return http.client.HTTPSConnection(host, port, timeout=_TIMEOUT, context=self._ssl)

    def _error(self, resp: http.client.HTTPResponse, missing: str) -> RegistryError:
        code, detail = _detail(resp)
        where = f"{self.ref.repository} on {self.ref.registry}"
        if code == "NAME_UNKNOWN":
            text = f"repository {where} does not exist"
        elif code in ("MANIFEST_UNKNOWN", "BLOB_UNKNOWN") or resp.status == 404:
            text = missing
        elif resp.status in (401, 403) or code in ("UNAUTHORIZED", "DENIED"):
            text = f"access to {where} denied (pass credentials, or check the name)"
        elif resp.status == 429 or code == "TOOMANYREQUESTS":
            text = f"{self.ref.registry} is rate-limiting pulls"
        else:
            text = f"{self.ref.registry} failed a request for {self.ref}"
        return RegistryError(f"{text} ({detail})", status=resp.status, code=code)

    def _authenticate(self, challenge: str, stale: str | None) -> None:
        """Answer a ``WWW-Authenticate`` challenge: fetch a Bearer token, or use Basic credentials."""
        scheme, _, rest = challenge.strip().partition(" ")
        params = {m[0].lower(): m[1] or m[2] for m in _CHALLENGE_PARAM.findall(rest)}
        with self._lock:
            if self.authorization != stale:
                return  # another thread already answered this challenge
            basic = None
            if self.credentials:
                user, password = self.credentials
                basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if scheme.lower() == "basic":
                if basic is None or stale == basic:
                    why = "credentials rejected" if basic else "authentication required; pass credentials"
                    raise RegistryError(
                        f"{self.ref.registry}: {why} (HTTP 401)", status=401, code="UNAUTHORIZED"
                    )
                self.authorization = basic
            elif scheme.lower() == "bearer" and params.get("realm"):
                self.authorization = "Bearer " + self._token(params, basic)
            else:
                raise RegistryError(
                    f"{self.ref.registry} asks for unsupported authentication {challenge!r} (HTTP 401)",
                    status=401,
                )

    def _token(self, params: dict[str, str], basic: str | None) -> str:
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        with self._follow(url, {"Authorization": basic} if basic else {}) as resp:
            if resp.status != 200:
                code, detail = _detail(resp)
                why = "credentials rejected" if resp.status == 401 and basic else "refused"
                raise RegistryError(
                    f"the token service {realm} {why} for {self.ref.repository} ({detail})",
                    status=resp.status,
                    code=code,
                )
            body = _read_limited(resp, "token")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service {realm} answered without a token")
        return token


def _read_limited(resp: http.client.HTTPResponse, what: str) -> bytes:
    body = resp.read(_MAX_DOCUMENT + 1)
    if len(body) > _MAX_DOCUMENT:
        raise RegistryError(f"{what}: document larger than {_MAX_DOCUMENT} bytes")
    return body


def _verify(digest: str, body: bytes, what: str) -> None:
    algorithm, _, expected = digest.partition(":")
    if hashlib.new(algorithm, body).hexdigest() != expected:
        raise RegistryError(f"{what} failed verification: its content does not have that digest")


def _detail(resp: http.client.HTTPResponse) -> tuple[str | None, str]:
    """The registry's error code and a one-line detail from an error response."""
    code = message = ""
    with contextlib.suppress(ValueError, TypeError, KeyError, IndexError, AttributeError):
        doc = json.loads(resp.read(65536))
        if isinstance(doc.get("errors"), list):
            first = doc["errors"][0]
            code, message = str(first.get("code") or ""), str(first.get("message") or "")
        else:  # token services answer {"details": ...} or OAuth's {"error": ..., "error_description": ...}
            message = str(doc.get("details") or doc.get("error_description") or doc.get("error") or "")
    return code or None, f"HTTP {resp.status}: " + (", ".join(x for x in (code, message) if x) or resp.reason)
