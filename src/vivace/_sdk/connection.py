"""The SDK's one API client, created lazily on the SDK loop from the resolved settings."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from vivace._sdk.config import load_settings
from vivace.exception import InvalidError

if TYPE_CHECKING:
    from vivace.client import ApiClient

_client: ApiClient | None = None
_lock: asyncio.Lock | None = None


async def get_client() -> ApiClient:
    global _client, _lock
    if _client is not None:
        return _client
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if _client is None:
            if os.environ.get("VIVACE_SOCKET"):
                raise InvalidError(
                    "calling the vivace API from inside a container is not supported yet in this release"
                )
            from vivace.client import ApiClient, Credentials

            settings = load_settings()
            if settings.server_url:
                url, token = settings.server_url, f"{settings.token_id}:{settings.token_secret}"
            else:
                from vivace._sdk.daemon import ensure_daemon

                url, token = await asyncio.to_thread(ensure_daemon, settings.home)
            _client = ApiClient(url, Credentials.parse(token))
    return _client


async def reset_client() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
    _client = None
