"""A real OCI registry (the CNCF distribution registry, Debian's ``docker-registry``) on loopback,
started with its own config and storage under a test directory, and stopped by the test."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .tools import free_port, require_tool


class Registry:
    """One ``docker-registry serve`` process: filesystem storage in ``root``, HTTP on 127.0.0.1."""

    def __init__(
        self,
        root: Path,
        *,
        auth: dict[str, Any] | None = None,
        middleware: dict[str, Any] | None = None,
        host: str = "127.0.0.1",
        tls: dict[str, str] | None = None,
    ):
        self.binary = require_tool("docker-registry", "docker-registry")
        self.root = root
        self.storage = root / "storage"
        self.log = root / "registry.log"
        self.port = free_port()
        self.host = f"{host}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.ssl = ssl.create_default_context(cafile=tls["certificate"]) if tls else None
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text"},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "vivace-test-secret"},
        }
        if tls:
            config["http"]["tls"] = tls
        if auth:
            config["auth"] = auth
        if middleware:
            config["middleware"] = middleware
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.yml"
        self.config.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "serve", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=2, context=self.ssl):
                    return self
            except urllib.error.HTTPError as e:
                if e.code == 401:  # up, and asking for credentials
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer in 20 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def blob_gets(self, digest: str) -> int:
        """How many times the registry's access log shows a GET of this blob."""
        text = self.log.read_text(errors="replace")
        return len(re.findall(rf'"GET /v2/[^ ]+/blobs/{re.escape(digest)} HTTP', text))

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.storage / "docker/registry/v2/blobs" / algorithm / hexdigest[:2] / hexdigest / "data"
