"""Typed object ids: a prefix names the kind of object, the rest is random.

Prefixes follow Modal's where Modal has one (``ap-``, ``fu-``, ``fc-``, ``in-``, ``ta-``).
"""

import secrets

APP = "ap"
FUNCTION = "fu"
FUNCTION_CALL = "fc"
INPUT = "in"
CONTAINER = "ta"
WORKER = "wk"
TOKEN = "tk"
DICT = "di"
QUEUE = "qu"
VOLUME = "vo"
SECRET = "st"
SANDBOX = "sb"

KINDS = {
    APP: "app",
    FUNCTION: "function",
    FUNCTION_CALL: "function call",
    CONTAINER: "container",
    WORKER: "worker",
    DICT: "dict",
    QUEUE: "queue",
    VOLUME: "volume",
    SECRET: "secret",
    SANDBOX: "sandbox",
}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(10)}"


def is_id(value: object, prefix: str) -> bool:
    if not isinstance(value, str) or not value.startswith(prefix + "-"):
        return False
    rest = value[len(prefix) + 1 :]
    return 4 <= len(rest) <= 64 and all(c.isalnum() for c in rest)
