"""What the running input is; read by ``vivace.current_input_id()`` and friends."""

from __future__ import annotations

from typing import Optional

container_id: Optional[str] = None
app_id: Optional[str] = None
function_id: Optional[str] = None
input_id: Optional[str] = None
function_call_id: Optional[str] = None


def set_container(cid: str, app: str, function: str) -> None:
    global container_id, app_id, function_id
    container_id, app_id, function_id = cid, app, function


def set_input(iid: Optional[str], call: Optional[str]) -> None:
    global input_id, function_call_id
    input_id, function_call_id = iid, call
