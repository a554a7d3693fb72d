"""``ApiClient``: authenticated, version-stamped requests with retries on transient failures.

Every call-path request is idempotent (inputs by ``(call_id, idx)``, outputs by cursor, leases by the
holder's list), so connection failures and 502/503/504 are retried with backoff for ``retry_for``
seconds: a control plane that restarts loses no work and the caller sees no error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from vivace import exception as exc
from vivace._version import __version__
from vivace.client.wire import HttpClient, Response
from vivace.protocol import frames
from vivace.protocol.versions import VERSION_HEADER

_STATUS_ERRORS: dict[int, type[exc.Error]] = {
    400: exc.InvalidError,
    401: exc.AuthError,
    403: exc.PermissionDeniedError,
    404: exc.NotFoundError,
    405: exc.InvalidError,
    409: exc.ConflictError,
    410: exc.NotFoundError,
    413: exc.RequestSizeError,
    422: exc.InvalidError,
    426: exc.VersionError,
    429: exc.ResourceExhaustedError,
}
_RETRY_STATUS = {502, 503, 504}


@dataclass(frozen=True)
class Credentials:
    token_id: str
    token_secret: str

    @classmethod
    def parse(cls, value: str) -> Credentials:
        tid, _, sec = value.partition(":")
        if not tid or not sec:
            raise exc.AuthError("a token looks like TOKEN_ID:TOKEN_SECRET")
        return cls(tid, sec)

    def header(self) -> str:
        return f"Bearer {self.token_id}:{self.token_secret}"


class ApiClient:
    def __init__(
        self, base_url: str, creds: Credentials, *, retry_for: float = 60.0, uds: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.creds = creds
        self.retry_for = retry_for
        self._http = HttpClient(
            self.base_url, {"authorization": creds.header(), VERSION_HEADER: __version__}, uds=uds
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        retry_for: float | None = None,
        content_type: str | None = None,
    ) -> Response:
        budget = self.retry_for if retry_for is None else retry_for
        deadline = time.monotonic() + budget
        delay = 0.05
        headers = {"content-type": content_type} if content_type else None
        while True:
            try:
                resp = await self._http.request(
                    method,
                    path,
                    json=json_body,
                    content=content,
                    params=params,
                    headers=headers,
                    timeout=30.0 if timeout is None else timeout,
                )
            except (OSError, asyncio.IncompleteReadError) as err:
                if time.monotonic() + delay > deadline:
                    raise exc.ServiceError(
                        f"cannot reach the vivace server at {self.base_url}: {err}"
                    ) from None
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code not in _RETRY_STATUS or time.monotonic() + delay > deadline:
                    raise _error_from(resp)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def put_file(
        self,
        path: str,
        src: Path | BinaryIO,
        *,
        timeout: float = 3600.0,
        retry_for: float = 60.0,
        progress: Callable[[int], None] | None = None,
    ) -> Any:
        """PUT the file ``src`` (a path, or an open binary file sent from its start) as the body,
        streamed; retried from the start while the server cannot be reached or is restarting. Returns the
        JSON answer. ``progress(n)`` is called as n more bytes go (a failed try reports the negative of
        what it sent)."""
        what = f"upload {src.name if isinstance(src, Path) else 'a file'}"
        return await self._streaming(
            lambda: self._put_file_once(path, src, timeout, progress), what, retry_for
        )

    async def _put_file_once(
        self, path: str, src: Path | BinaryIO, timeout: float, progress: Callable[[int], None] | None
    ) -> Response:
        with contextlib.ExitStack() as stack:
            if isinstance(src, Path):
                f: BinaryIO = stack.enter_context(src.open("rb"))
            else:
                f = src
                f.seek(0)
            size = os.fstat(f.fileno()).st_size
            body: Any = f if progress is None else _Counting(f, progress)
            try:
                resp = await self._http.send_file(
                    "PUT",
                    path,
                    body,
                    size,
                    headers={"content-type": "application/octet-stream"},
                    timeout=timeout,
                )
            except BaseException:
                if progress is not None:
                    progress(-body.count)
                raise
            if progress is not None and resp.status_code >= 400:
                progress(-body.count)
            return resp

    async def download(
        self,
        path: str,
        dest: Path,
        *,
        timeout: float = 3600.0,
        retry_for: float = 60.0,
        progress: Callable[[int], None] | None = None,
        sha256: str | None = None,
    ) -> None:
        """GET ``path`` into the file ``dest`` (created or truncated), streamed; retried like
        :meth:`put_file` (``progress`` as there). With ``sha256``, the content is hashed as it arrives
        and a mismatch is a ``ServiceError`` (``dest`` is then left to the caller to remove)."""
        got: list[str] = []

        async def once() -> Response:
            hasher = hashlib.sha256() if sha256 else None
            with dest.open("wb") as f:
                sink: Any = f if progress is None and hasher is None else _Counting(f, progress, hasher)
                try:
                    resp = await self._http.fetch_to(path, sink, timeout=timeout)
                except BaseException:
                    if progress is not None:
                        progress(-sink.count)
                    raise
                if progress is not None and resp.status_code >= 400:
                    progress(-sink.count)
                if hasher is not None:
                    got[:] = [hasher.hexdigest()]
                return resp

        await self._streaming(once, f"download {path}", retry_for)
        if sha256 is not None and got != [sha256]:
            raise exc.ServiceError(f"{path} arrived with the wrong content (sha256 {got[0] if got else '?'})")

    async def _streaming(self, once: Callable[[], Awaitable[Response]], what: str, retry_for: float) -> Any:
        deadline = time.monotonic() + retry_for
        delay = 0.2
        while True:
            try:
                resp = await once()
            except (OSError, asyncio.IncompleteReadError) as err:
                if time.monotonic() + delay > deadline:
                    raise exc.ServiceError(f"could not {what} at {self.base_url}: {err}") from None
            else:
                if resp.status_code < 400:
                    return resp.json() if resp.content else None
                if resp.status_code not in _RETRY_STATUS or time.monotonic() + delay > deadline:
                    raise _error_from(resp)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    async def get_json(self, path: str, **kw: Any) -> Any:
        return (await self.request("GET", path, **kw)).json()

    async def post_json(self, path: str, body: Any = None, **kw: Any) -> Any:
        return (await self.request("POST", path, json_body=body if body is not None else {}, **kw)).json()

    async def post_frames(self, path: str, header: dict[str, Any], blobs: list[bytes], **kw: Any) -> Response:
        return await self.request(
            "POST", path, content=frames.encode(header, blobs), content_type=frames.CONTENT_TYPE, **kw
        )

    @staticmethod
    def decode_frames(resp: Response) -> tuple[dict[str, Any], list[bytes]]:
        try:
            return frames.decode(resp.content)
        except frames.FrameError as err:
            raise exc.ServiceError(f"the server sent a malformed response: {err}") from None


class _Counting:
    """A file whose reads and writes report their sizes (for progress bars) and may feed a hash."""

    def __init__(self, f: Any, report: Callable[[int], None] | None, hasher: Any = None) -> None:
        self._f, self._report, self._hasher, self.count = f, report, hasher, 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._f.read(n)
        self._seen(data)
        return data

    def write(self, data: bytes) -> int:
        n: int = self._f.write(data)
        self._seen(data)
        return n

    def _seen(self, data: bytes) -> None:
        self.count += len(data)
        if self._hasher is not None:
            self._hasher.update(data)
        if self._report is not None:
            self._report(len(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _error_from(resp: Response) -> exc.Error:
    detail, code = resp.text[:2000], ""
    try:
        body = json.loads(resp.content)
        if isinstance(body, dict):
            detail = str(body.get("detail", detail))
            code = str(body.get("code", ""))
    except ValueError:
        pass
    cls = _STATUS_ERRORS.get(resp.status_code, exc.ServiceError)
    err = cls(detail or f"HTTP {resp.status_code}")
    err.code = code  # type: ignore[attr-defined]
    err.status = resp.status_code  # type: ignore[attr-defined]
    return err
