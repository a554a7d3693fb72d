"""Secrets as client and server both see them: what a secret's environment may hold, and its limits.

A secret is a set of environment variables. Its keys are variable names (``[A-Za-z_][A-Za-z0-9_]*``,
not in the ``VIVACE_`` or ``MODAL_`` namespaces, which the runtime uses) and its values are strings.
Problems are described by key name only: a value never appears in an error message.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_PREFIXES = ("VIVACE_", "MODAL_")
MAX_KEYS = 1000
"""Variables one secret holds, at most."""
MAX_BYTES = 64 * 1024
"""A secret's keys and values together, UTF-8 encoded, at most."""
MAX_KEY_LEN = 256


def key_problem(key: object) -> Optional[str]:
    """Why ``key`` cannot name a secret's variable, or None when it can."""
    if not isinstance(key, str):
        return f"a secret's keys must be strings, not {type(key).__name__}"
    if len(key) > MAX_KEY_LEN or not ENV_KEY.fullmatch(key):
        shown = key if len(key) <= 64 else key[:61] + "..."
        return (
            f"invalid secret key {shown!r}: an environment variable name "
            "(letters, digits and '_', not starting with a digit)"
        )
    if key.upper().startswith(RESERVED_PREFIXES):
        return f"secret key {key!r} is reserved: names starting with VIVACE_ or MODAL_ belong to the runtime"
    return None


def env_problem(env: Any) -> Optional[str]:
    """Why ``env`` cannot be a secret's environment, or None when it can. Names keys, never values."""
    if not isinstance(env, dict):
        return f"a secret's environment must be a dict of str to str, not {type(env).__name__}"
    if len(env) > MAX_KEYS:
        return f"a secret holds at most {MAX_KEYS:,} keys, not {len(env):,}"
    size = 0
    for key, value in env.items():
        problem = key_problem(key)
        if problem:
            return problem
        if not isinstance(value, str):
            return f"the value of secret key {key!r} must be a string, not {type(value).__name__}"
        if "\x00" in value:
            return f"the value of secret key {key!r} contains a NUL character"
        try:
            size += len(key.encode()) + len(value.encode())
        except UnicodeEncodeError:
            return f"the value of secret key {key!r} is not valid UTF-8 text"
    if size > MAX_BYTES:
        return f"a secret's keys and values total {size:,} bytes; the limit is {MAX_BYTES:,}"
    return None


def missing_keys(env: Dict[str, str], required: Any) -> List[str]:
    """The keys of ``required`` that ``env`` lacks, in the order given."""
    return [k for k in required if k not in env]
