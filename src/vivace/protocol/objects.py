"""Storage objects (Dict, Queue) as client and server both see them: names and limits."""

from __future__ import annotations

import re

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_KEY_BYTES = 64 * 1024
"""A Dict key's pickle, at most."""
MAX_VALUE_BYTES = 1024 * 1024
"""A Dict value's or a Queue item's pickle, at most."""
MAX_BATCH = 1000
"""Items one Queue put or get moves, at most."""
MAX_PARTITION_BYTES = 64
DEFAULT_PARTITION_TTL = 86400.0
MAX_PARTITION_TTL = 7 * 86400.0


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a storage object, or None when it can."""
    if not isinstance(name, str):
        return f"a name must be a string, not {type(name).__name__}"
    if not NAME.match(name):
        return (
            f"invalid name {name!r}: 1-64 characters, letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return None


def partition_problem(partition: object) -> str | None:
    """Why ``partition`` cannot name a Queue partition (None is the default one)."""
    if partition is None:
        return None
    if not isinstance(partition, str) or not partition:
        return "a partition must be a non-empty string (or None, the default partition)"
    if len(partition.encode()) > MAX_PARTITION_BYTES or not NAME.match(partition):
        return (
            f"invalid partition {partition!r}: up to {MAX_PARTITION_BYTES} letters, digits, '.', '_' and '-'"
        )
    return None
