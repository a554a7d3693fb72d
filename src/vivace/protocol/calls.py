"""Inputs and outputs on the call path.

An input is identified by its idempotency key ``(call_id, idx)``; the store gives it a sequence
number when first persisted. An output belongs to one input; ``part`` is ``FINAL`` for the one
final output and 0, 1, 2... for the items of a generator.
"""

import enum

FINAL = -1
MAX_INLINE_PAYLOAD = 2 * 1024 * 1024
MAX_PAYLOAD = 256 * 1024 * 1024


class OutputStatus(str, enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # the user's code raised
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SYSTEM = "system"  # the platform failed too often (container or worker lost)
    INIT_FAILURE = "init_failure"  # importing the user's module or building the function failed


FINAL_STATUSES = frozenset(OutputStatus)


class CallKind(str, enum.Enum):
    REMOTE = "remote"
    MAP = "map"
    SPAWN = "spawn"
    GENERATOR = "generator"
    SCHEDULE = "schedule"  # fired by the control plane for a function's schedule
    WEB = "web"  # an HTTP request to the function's web endpoint (protocol/web.py)


def input_id(seq: int) -> str:
    return f"in-{seq}"
