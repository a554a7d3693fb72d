"""What the running input is; read by ``vivace.current_input_id()`` and friends.

The input is a context variable: with ``@concurrent`` several inputs run at once, each in its own
thread or asyncio task, and each sees its own id.
"""

from __future__ import annotations

import contextvars
from typing import Optional, Tuple

container_id: Optional[str] = None
app_id: Optional[str] = None
function_id: Optional[str] = None
_input: contextvars.ContextVar[Tuple[Optional[str], Optional[str]]] = contextvars.ContextVar(
    "vivace_input", default=(None, None)
)


def set_container(cid: str, app: str, function: str) -> None:
    global container_id, app_id, function_id
    container_id, app_id, function_id = cid, app, function


def set_input(iid: Optional[str], call: Optional[str]) -> None:
    _input.set((iid, call))


def input_id() -> Optional[str]:
    return _input.get()[0]


def function_call_id() -> Optional[str]:
    return _input.get()[1]
