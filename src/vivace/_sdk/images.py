"""Building images from the client: upload local files, register the chain, follow the build log."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from vivace import exception as exc
from vivace._sdk.connection import get_client

if TYPE_CHECKING:
    from vivace.image import Image

POLL_WAIT = 25.0
LOG_TAIL = 40


async def build(image: Image, *, show_logs: bool) -> str:
    """Make sure ``image`` is built; return its id. Raises ``ImageBuildError`` with the log tail."""
    api = await get_client()
    if image._fixed_id is not None:  # Image.from_id: it must exist
        info = await api.get_json(f"/v1/images/{image._fixed_id}")
        return await _follow(api, info, 0, show_logs)
    steps = image.steps()
    await _check_secrets(api, steps)
    for digest, archive in image.archives().items():
        await api.request(
            "PUT", f"/v1/blobs/{digest}", content=archive.data, content_type="application/octet-stream"
        )
    info = await api.post_json("/v1/images", {"steps": steps})
    return await _follow(api, info, 0, show_logs)


async def _check_secrets(api: Any, steps: list[dict[str, Any]]) -> None:
    """The named secrets the build steps use exist (and a registry's has its two keys): a missing one is
    a NotFoundError now, not a failed build later. Their values go to the building worker only."""
    from vivace.protocol import images as proto

    wanted: dict[str, set[str]] = {}
    for step in steps:
        for name in step.get("secrets") or []:
            wanted.setdefault(name, set())
        if step.get("auth_secret"):
            wanted.setdefault(step["auth_secret"], set()).update(proto.REGISTRY_SECRET_KEYS)
    for name, keys in wanted.items():
        await api.post_json("/v1/secrets/lookup", {"name": name, "required_keys": sorted(keys)})


async def _follow(api: Any, info: dict[str, Any], cursor: int, show_logs: bool) -> str:
    image_id = str(info["image_id"])
    tail: list[str] = []
    announced = False
    while info["state"] not in ("ready", "failed") or info.get("logs"):
        for line in info.get("logs", []):
            tail = [*tail[-(LOG_TAIL - 1) :], line["line"]]
            if show_logs:
                print(f"[build {image_id[:15]}] {line['line']}", file=sys.stderr, flush=True)
        if info["state"] in ("ready", "failed"):
            break
        if show_logs and not announced:
            print(f"Building image {image_id} ({len(info['steps'])} steps)...", file=sys.stderr, flush=True)
            announced = True
        info = await api.get_json(
            f"/v1/images/{image_id}", params={"cursor": cursor, "wait": POLL_WAIT}, timeout=POLL_WAIT + 30
        )
        cursor = info.get("cursor", cursor)
    if info["state"] == "failed":
        last = "\n".join(tail[-LOG_TAIL:])
        raise exc.ImageBuildError(
            f"image {image_id} failed to build: {info.get('error') or 'no reason given'}"
            + (
                f"\n--- last build log lines ---\n{last}"
                if last and last not in (info.get("error") or "")
                else ""
            )
        )
    if show_logs and announced:
        print(f"Built image {image_id}.", file=sys.stderr, flush=True)
    return image_id
