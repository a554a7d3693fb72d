"""A small Docker token service on loopback (the ``realm`` of a ``Bearer`` challenge): issues JWTs
signed with a throwaway RSA key (``openssl``) whose certificate the registry trusts.

Anonymous callers get ``pull`` on public repositories only, and an empty grant elsewhere (as Docker
Hub does); callers with a listed user's password get what they ask for; a wrong password is a 401.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .tools import require_tool

SERVICE = "vivace-test-registry"
_SELF_SIGNED = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"]
ISSUER = "vivace-test-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    def __init__(self, root: Path, users: dict[str, str], public: set[str]) -> None:
        self.openssl = require_tool("openssl", "openssl")
        root.mkdir(parents=True, exist_ok=True)
        self.key = root / "token.key"
        self.cert = root / "token.crt"
        subprocess.run(
            [
                self.openssl,
                *_SELF_SIGNED,
                "/CN=vivace-test-token-issuer",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.x5c = base64.b64encode(ssl.PEM_cert_to_DER_cert(self.cert.read_text())).decode()
        self.users = users
        self.public = public
        self.requests: list[dict[str, Any]] = []  # what each token request carried
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> TokenService:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def registry_auth(self) -> dict[str, Any]:
        """The ``auth`` section of the registry's config."""
        return {
            "token": {
                "realm": self.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(self.cert),
            }
        }

    def issue(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": _b64url(os.urandom(12)),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            [self.openssl, "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.path).query)
        user = ""
        authorization = req.headers.get("Authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            name, _, password = base64.b64decode(value).decode().partition(":")
            if scheme != "Basic" or self.users.get(name) != password:
                self.requests.append({"query": query, "user": name, "ok": False})
                self._reply(req, 401, {"details": "incorrect username or password"})
                return
            user = name
        access = []
        for scope in " ".join(query.get("scope", [])).split():
            kind, name, actions = scope.split(":")
            granted = actions.split(",") if user else (["pull"] if name in self.public else [])
            access.append({"type": kind, "name": name, "actions": granted})
        self.requests.append({"query": query, "user": user, "ok": True})
        token = self.issue(user, access)
        self._reply(req, 200, {"token": token, "access_token": token, "expires_in": 300})

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)
