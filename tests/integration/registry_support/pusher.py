"""Pushing images with the distribution API (the registry's side of ``docker push``): blob uploads
(``POST`` then ``PUT ?digest=``) and manifests (``PUT``)."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    "plain": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


@dataclass
class Layer:
    blob: bytes
    diff_id: str  # sha256 of the uncompressed tar
    compression: str

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.blob).hexdigest()


class Pusher:
    def __init__(
        self, base_url: str, authorization: str | None = None, context: ssl.SSLContext | None = None
    ) -> None:
        self.base = base_url
        self.authorization = authorization
        self.context = context

    def _request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> http.client.HTTPResponse:
        parts = urllib.parse.urlsplit(urllib.parse.urljoin(self.base, url))
        conn = (
            http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=30, context=self.context)
            if parts.scheme == "https"
            else http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        )
        headers = {"Content-Length": str(len(body))}
        if content_type:
            headers["Content-Type"] = content_type
        if self.authorization:
            headers["Authorization"] = self.authorization
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp

    def blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        resp = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        assert resp.status == 202, f"upload start: HTTP {resp.status}"
        location = resp.getheader("Location") or ""
        sep = "&" if "?" in location else "?"
        resp = self._request("PUT", f"{location}{sep}digest={digest}", data, "application/octet-stream")
        assert resp.status == 201, f"upload of {digest}: HTTP {resp.status}"
        return digest

    def manifest(self, repo: str, reference: str, doc: dict[str, Any], media_type: str) -> str:
        body = json.dumps(doc, indent=3).encode()
        resp = self._request("PUT", f"/v2/{repo}/manifests/{reference}", body, media_type)
        assert resp.status == 201, f"manifest {repo}:{reference}: HTTP {resp.status}"
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def image(
        self,
        repo: str,
        tag: str,
        layers: list[Layer],
        *,
        oci: bool = True,
        config: dict[str, Any] | None = None,
        architecture: str = "amd64",
    ) -> dict[str, Any]:
        """Push an image; returns its manifest's descriptor (for a manifest list)."""
        config_doc = {
            "architecture": architecture,
            "os": "linux",
            "config": config or {},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        }
        config_blob = json.dumps(config_doc).encode()
        descriptors = []
        for layer in layers:
            self.blob(repo, layer.blob)
            media_type = OCI_LAYER[layer.compression] if oci else DOCKER_LAYER
            descriptors.append({"mediaType": media_type, "digest": layer.digest, "size": len(layer.blob)})
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "digest": self.blob(repo, config_blob),
                "size": len(config_blob),
            },
            "layers": descriptors,
        }
        media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        body_digest = self.manifest(repo, tag, doc, media_type)
        size = len(json.dumps(doc, indent=3).encode())
        return {"mediaType": media_type, "digest": body_digest, "size": size}

    def index(
        self, repo: str, tag: str, entries: list[tuple[dict[str, Any], dict[str, str]]], *, oci: bool
    ) -> str:
        """Push a manifest list (Docker) or image index (OCI) of (descriptor, platform) pairs."""
        media_type = OCI_INDEX if oci else DOCKER_LIST
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [{**descriptor, "platform": platform} for descriptor, platform in entries],
        }
        return self.manifest(repo, tag, doc, media_type)
