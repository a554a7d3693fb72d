"""The SDK's one API client, created lazily on the SDK loop from the resolved settings."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from vivace._sdk.config import load_settings

if TYPE_CHECKING:
    from vivace.client import ApiClient

_client: ApiClient | None = None
_lock: asyncio.Lock | None = None


CONTAINER_API = "http://worker/api"


async def get_client() -> ApiClient:
    global _client, _lock
    if _client is not None:
        return _client
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if _client is None:
            from vivace.client import ApiClient, Credentials

            socket_path = os.environ.get("VIVACE_SOCKET")
            if socket_path:
                # inside a container: the worker forwards /api/... to the control plane, acting for this
                # container with its app's scope; the container itself holds no credentials
                _client = ApiClient(CONTAINER_API, Credentials("container", "none"), uds=socket_path)
                return _client

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
