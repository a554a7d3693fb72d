"""Metering's wire vocabulary (ADR 0015): pool names, usage groupings, spend limit periods."""

from __future__ import annotations

import re

DEFAULT_POOL = "default"
POOL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
GROUPS = ("app", "function", "gpu", "pool", "day", "container")
PERIODS = ("day", "month", "total")


def check_pool(name: str) -> str:
    """A pool name, or ValueError saying what one looks like."""
    if not isinstance(name, str) or not POOL_NAME.fullmatch(name):
        raise ValueError(
            f"pool name {name!r} must be 1-63 lowercase letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name
