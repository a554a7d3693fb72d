"""HTTP/1.1 over the worker's unix socket with the stdlib only."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any, Dict, List, Optional, Tuple

from vivace._version import __version__
from vivace.protocol import frames


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float] = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class SocketError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"worker answered {status}: {message}")
        self.status = status


class WorkerSocket:
    """One keep-alive connection to the worker; use one per thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn = _UnixConnection(path, timeout=None)

    def _call(
        self, method: str, url: str, body: Optional[bytes] = None, ctype: str = "application/json"
    ) -> bytes:
        headers = {"x-vivace-version": __version__, "content-type": ctype}
        for attempt in range(2):
            try:
                self._conn.request(method, url, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self._conn.close()
                if attempt == 1:
                    raise
        if resp.status >= 400:
            raise SocketError(resp.status, data.decode("utf-8", "replace"))
        return data

    def get_json(self, url: str) -> Any:
        return json.loads(self._call("GET", url))

    def get_bytes(self, url: str) -> bytes:
        return self._call("GET", url)

    def post_json(self, url: str, body: Dict[str, Any]) -> Any:
        return json.loads(self._call("POST", url, json.dumps(body).encode()))

    def exchange(self, header: Dict[str, Any], blobs: List[bytes]) -> Tuple[Dict[str, Any], List[bytes]]:
        data = self._call("POST", "/exchange", frames.encode(header, blobs), frames.CONTENT_TYPE)
        return frames.decode(data)
