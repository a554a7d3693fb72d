"""HTTP API under /v1: one Starlette app; handlers parse, authorize and call services."""

from vivace.server.api.app import create_app

__all__ = ["create_app"]
