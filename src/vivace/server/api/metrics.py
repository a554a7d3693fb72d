"""``GET /metrics``: Prometheus text format, for any scraper with a user token as its bearer token."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from vivace.server.api.common import plane_of, route
from vivace.server.services import metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_lock = asyncio.Lock()  # one scrape at a time reads what is new (two at once would count it twice)


@route(versioned=False)
async def scrape(request: Request) -> Response:
    plane = plane_of(request)
    async with _lock:
        if plane.metrics is None:
            plane.metrics = await plane.store.read(metrics.start)
        acc = plane.metrics
        text = await plane.store.read(lambda tx: metrics.scrape(tx, acc))
    return Response(text, media_type=CONTENT_TYPE)
